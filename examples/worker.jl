# The script of examples/juliaparbatchworkers.yaml: each worker says who it is.
println("worker ", ENV["JULIARUN_WORKER_INDEX"], " of ", ENV["JULIARUN_NWORKERS"], " up")
