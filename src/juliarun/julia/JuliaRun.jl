# Helpers for Julia code running under juliarun; no packages needed.
#   include(ENV["JULIARUN_JL"])
#   JuliaRun.record("files_processed", 42; stage="parse")
module JuliaRun

export record

escape_key(s) = replace(replace(replace(string(s), "," => "\\,"), " " => "\\ "), "=" => "\\=")

"""
    record(name, value; tags...)

Record a metric point for the running job: appends one InfluxDB line-protocol line to the file
named by `JULIARUN_METRICS_FILE`; juliarun ships it to the metric store with the job's tags.
"""
function record(name::AbstractString, value::Real; tags...)
    path = get(ENV, "JULIARUN_METRICS_FILE", "")
    isempty(path) && error("JULIARUN_METRICS_FILE is not set: not running under juliarun")
    tagtext = join([",$(escape_key(k))=$(escape_key(v))" for (k, v) in tags])
    ns = round(Int128, time() * 1e9)
    open(path, "a") do io
        write(io, "$(escape_key(name))$(tagtext) value=$(Float64(value)) $(ns)\n")
    end
    nothing
end

end # module
