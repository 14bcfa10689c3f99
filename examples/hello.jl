# The script of examples/juliabatch.yaml: one line, then a sum.
println("hello world!")
println("sum of 1:10 = ", sum(1:10))
