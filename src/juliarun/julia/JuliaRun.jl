# Helpers for Julia code running under juliarun; no packages needed.
#   include(ENV["JULIARUN_JL"])
#   JuliaRun.record("files_processed", 42; stage="parse")
module JuliaRun

export record

escape_key(s) = replace(replace(replace(string(s), "," => "\\,"), " " => "\\ "), "=" => "\\=")

"""
    record(name, value; tags...)

Record a metric point for the running job: one InfluxDB line-protocol line, appended to the
file named by `JULIARUN_METRICS_FILE` (local, Docker), or printed on stdout after the reserved
prefix `##juliarun-metric ` when `JULIARUN_METRICS_STDOUT=1` (Kubernetes: the log collector
turns such lines into points). juliarun ships it to the metric store with the job's tags.
"""
function record(name::AbstractString, value::Real; tags...)
    tagtext = join([",$(escape_key(k))=$(escape_key(v))" for (k, v) in tags])
    ns = round(Int128, time() * 1e9)
    line = "$(escape_key(name))$(tagtext) value=$(Float64(value)) $(ns)"
    if get(ENV, "JULIARUN_METRICS_STDOUT", "") == "1"
        println(stdout, "##juliarun-metric ", line)
        flush(stdout)
        return nothing
    end
    path = get(ENV, "JULIARUN_METRICS_FILE", "")
    isempty(path) && error("JULIARUN_METRICS_FILE is not set: not running under juliarun")
    open(path, "a") do io
        write(io, line, "\n")
    end
    nothing
end

end # module
