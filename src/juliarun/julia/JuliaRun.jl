# Helpers for Julia code running under juliarun; no packages needed.
#   include(ENV["JULIARUN_JL"])
#   JuliaRun.record("files_processed", 42; stage="parse")
#   JuliaRun.consume("work") do body ... end      # a queue started with juliarun.start_queue
#   JuliaRun.publish("done", "result")
#   JuliaRun.serve(8000) do req ... end              # an HTTP service for juliarun.expose
module JuliaRun

using Sockets

export record, consume, publish, serve

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

# ---------------------------------------------------------------------------------------------
# Queues: STOMP 1.2 over RabbitMQ's STOMP plugin, on the Sockets standard library.
# The broker is reached through the variables a queue's `env` gives a job:
# JULIARUN_QUEUE_HOST, JULIARUN_QUEUE_PORT (STOMP), JULIARUN_QUEUE_USER,
# JULIARUN_QUEUE_PASSWORD, JULIARUN_QUEUE_VHOST. Destinations are `/queue/<name>`: the durable,
# non-exclusive queue without arguments that `Queue.declare` creates too, so either side may
# come first.

"""A broker refused something (an ERROR frame) or the queue variables are missing."""
struct QueueError <: Exception
    msg::String
end
Base.showerror(io::IO, e::QueueError) = print(io, "QueueError: ", e.msg)

struct Frame
    command::String
    headers::Vector{Pair{String,String}}
    body::Vector{UInt8}
end

"""The first value of header `key` (STOMP 1.2: a repeated header's first entry wins)."""
function header(f::Frame, key::AbstractString, default=nothing)
    for (k, v) in f.headers
        k == key && return v
    end
    default
end


stomp_escape(s::AbstractString) =
    replace(replace(replace(replace(s, "\\" => "\\\\"), "\r" => "\\r"), "\n" => "\\n"), ":" => "\\c")

function stomp_unescape(s::AbstractString)
    occursin('\\', s) || return String(s)
    out = IOBuffer()
    i = firstindex(s)
    while i <= lastindex(s)
        c = s[i]
        if c == '\\'
            j = nextind(s, i)
            j <= lastindex(s) || throw(QueueError("bad STOMP header escape at the end of $(repr(s))"))
            d = s[j]
            d == '\\' ? write(out, '\\') : d == 'r' ? write(out, '\r') : d == 'n' ? write(out, '\n') :
            d == 'c' ? write(out, ':') : throw(QueueError("bad STOMP header escape \\$d in $(repr(s))"))
            i = nextind(s, j)
        else
            write(out, c)
            i = nextind(s, i)
        end
    end
    String(take!(out))
end

"""
    encode_frame(command, headers, body=UInt8[]) -> Vector{UInt8}

One STOMP 1.2 frame; a body always goes with its `content-length`. Header names and values are
escaped except in CONNECT (whose headers STOMP 1.2 leaves unescaped).
"""
function encode_frame(command::AbstractString, headers, body=UInt8[])
    bytes = body isa AbstractString ? Vector{UInt8}(codeunits(body)) : Vector{UInt8}(body)
    escape = command != "CONNECT"
    io = IOBuffer()
    write(io, command, '\n')
    for (k, v) in headers
        write(io, escape ? stomp_escape(k) : k, ':', escape ? stomp_escape(string(v)) : string(v), '\n')
    end
    if !isempty(bytes) || command == "SEND"
        write(io, "content-length:", string(length(bytes)), '\n')
    end
    write(io, '\n')
    write(io, bytes)
    write(io, 0x00)
    take!(io)
end

"""
    read_frame(io) -> Frame

The next frame from `io`, skipping heart-beat end-of-lines; throws `EOFError` when the stream
ends first.
"""
function read_frame(io::IO)
    command = ""
    while isempty(command)
        eof(io) && throw(EOFError())
        command = readline(io)
    end
    headers = Pair{String,String}[]
    unescape = command != "CONNECTED"
    while true
        eof(io) && throw(EOFError())
        line = readline(io)
        isempty(line) && break
        at = findfirst(':', line)
        at === nothing && throw(QueueError("bad STOMP header line $(repr(line)) in a $command frame"))
        k, v = line[1:prevind(line, at)], line[nextind(line, at):end]
        push!(headers, unescape ? (stomp_unescape(k) => stomp_unescape(v)) : (k => v))
    end
    f = Frame(command, headers, UInt8[])
    len = header(f, "content-length")
    if len === nothing
        body = readuntil(io, 0x00; keep=true)
        (isempty(body) || body[end] != 0x00) && throw(EOFError())
        resize!(body, length(body) - 1)
    else
        n = parse(Int, len)
        body = read(io, n)
        length(body) == n || throw(EOFError())
        eof(io) && throw(EOFError())
        read(io, UInt8) == 0x00 || throw(QueueError("a $command frame's body is longer than its content-length"))
    end
    Frame(command, headers, body)
end

function error_text(f::Frame)
    message = header(f, "message", "")
    detail = strip(String(copy(f.body)))
    isempty(detail) ? "the broker said: $message" : "the broker said: $message ($detail)"
end

function queue_config()
    names = ("JULIARUN_QUEUE_HOST", "JULIARUN_QUEUE_PORT", "JULIARUN_QUEUE_USER", "JULIARUN_QUEUE_PASSWORD")
    missing = [n for n in names if isempty(get(ENV, n, ""))]
    isempty(missing) || throw(QueueError(
        "$(join(missing, ", ")) not set: start a queue (juliarun.start_queue) and give the job its env"))
    (host=ENV["JULIARUN_QUEUE_HOST"], port=parse(Int, ENV["JULIARUN_QUEUE_PORT"]),
     user=ENV["JULIARUN_QUEUE_USER"], password=ENV["JULIARUN_QUEUE_PASSWORD"],
     vhost=get(ENV, "JULIARUN_QUEUE_VHOST", "/"))
end

"""Connect and log in. Heart-beats are off: a handler computing for minutes never yields, so it
could not send them, and the broker would drop a healthy worker; a broker that goes away closes
the TCP connection, which the reader sees at once."""
function stomp_connect(cfg)
    sock = Sockets.connect(cfg.host, cfg.port)
    try
        write(sock, encode_frame("CONNECT", ["accept-version" => "1.2", "host" => cfg.vhost,
            "login" => cfg.user, "passcode" => cfg.password, "heart-beat" => "0,0"]))
        f = read_frame(sock)
        f.command == "ERROR" && throw(QueueError(error_text(f)))
        f.command == "CONNECTED" || throw(QueueError("expected CONNECTED from the broker, got $(f.command)"))
    catch
        close(sock)
        rethrow()
    end
    sock
end

# -- stop requests: SIGTERM sets a flag (a C-callable handler that only stores an integer) -------

const STOP_FLAG = Ref{Ptr{Cint}}(C_NULL)
const SIGTERM = Cint(15)
const SIG_UNBLOCK = Cint(1)

function on_sigterm(sig::Cint)::Nothing
    sig == 0 && return nothing          # the warm-up call at installation
    unsafe_store!(STOP_FLAG[], sig)
    nothing
end

"""
    stop_on_sigterm()

From now on SIGTERM asks this process to stop (see `stop_requested`) instead of ending it.
Julia 1.5 hands SIGTERM to its signal thread, which ends the process at once; here the main
thread unblocks SIGTERM and installs a handler that only sets a flag, so the kernel delivers
the signal to it. `consume` installs this itself.
"""
function stop_on_sigterm()
    STOP_FLAG[] == C_NULL || return nothing
    flag = convert(Ptr{Cint}, Libc.malloc(sizeof(Cint)))
    unsafe_store!(flag, 0)
    STOP_FLAG[] = flag
    handler = @cfunction(on_sigterm, Nothing, (Cint,))
    ccall(handler, Nothing, (Cint,), 0)  # compiled now, never inside the signal handler
    ccall(:signal, Ptr{Cvoid}, (Cint, Ptr{Cvoid}), SIGTERM, handler)
    set = zeros(UInt64, 16)              # a sigset_t (128 bytes)
    ccall(:sigemptyset, Cint, (Ptr{UInt64},), set)
    ccall(:sigaddset, Cint, (Ptr{UInt64}, Cint), set, SIGTERM)
    ccall(:pthread_sigmask, Cint, (Cint, Ptr{UInt64}, Ptr{UInt64}), SIG_UNBLOCK, set, C_NULL)
    nothing
end

"""`true` once SIGTERM has arrived (after `stop_on_sigterm`)."""
stop_requested() = STOP_FLAG[] != C_NULL && unsafe_load(STOP_FLAG[]) != 0

function pause(seconds::Real)
    deadline = time() + seconds
    while time() < deadline && !stop_requested()
        sleep(min(0.05, max(0.0, deadline - time())))
    end
end

log_queue(msg) = (println(stderr, "juliarun queue: ", msg); flush(stderr))

"""
    mark_busy(on::Bool)

Tell the platform whether this worker is handling a message: the file `JULIARUN_BUSY_FILE`
(set by the local and Docker backends) exists exactly while it does, so a scale-down removes
idle workers first. Best effort: a file that cannot be written never stops the work.
"""
function mark_busy(on::Bool)
    path = get(ENV, "JULIARUN_BUSY_FILE", "")
    isempty(path) && return nothing
    try
        on ? touch(path) : rm(path; force=true)
    catch err
        err isa InterruptException && rethrow()
    end
    nothing
end

"""
    consume(handler, queue; prefetch=1, max_backoff=5.0, give_up_after=300.0) -> Int

Take messages from `queue` and call `handler(body::String)` for each, one at a time. A message
is acknowledged after `handler` returns; if it throws, the error is printed and the message is
requeued (nack) for another try. At most `prefetch` messages are delivered and not yet
acknowledged. A lost connection is retried with exponential backoff (0.1 s doubling up to
`max_backoff`), giving up after `give_up_after` seconds without a connection; messages not
acknowledged when it was lost are redelivered (delivery is at least once).

On SIGTERM the message in hand is finished and acknowledged, the connection is closed, and
`consume` returns the number of messages handled, so the script can end with status 0. While a
message is in hand the worker reads as busy to the platform (see `mark_busy`).
"""
function consume(handler, queue::AbstractString; prefetch::Integer=1, max_backoff::Real=5.0,
                 give_up_after::Real=300.0)
    prefetch >= 1 || throw(ArgumentError("prefetch must be at least 1 (got $prefetch)"))
    stop_on_sigterm()
    cfg = queue_config()
    destination = "/queue/" * queue
    handled = 0
    busy = Ref(false)
    sock = Ref{Any}(nothing)
    # While the reader waits for a frame, a stop request closes the socket under it.
    watcher = Timer(0.1; interval=0.1) do _
        if stop_requested() && !busy[] && sock[] !== nothing
            close(sock[])
        end
    end
    backoff = 0.1
    failing_since = 0.0
    try
        while !stop_requested()
            try
                sock[] = stomp_connect(cfg)
                write(sock[], encode_frame("SUBSCRIBE", ["id" => "0", "destination" => destination,
                    "ack" => "client-individual", "prefetch-count" => string(prefetch)]))
                failing_since > 0 && log_queue("connected again to $(cfg.host):$(cfg.port)")
                backoff, failing_since = 0.1, 0.0
                while !stop_requested()
                    f = read_frame(sock[])
                    f.command == "ERROR" && throw(QueueError(error_text(f)))
                    f.command == "MESSAGE" || continue
                    ack = header(f, "ack")
                    busy[] = true
                    mark_busy(true)
                    ok = try
                        handler(String(f.body))
                        true
                    catch err
                        err isa InterruptException && rethrow()
                        log_queue("handler failed; the message goes back to the queue: " *
                                  sprint(showerror, err, catch_backtrace()))
                        false
                    end
                    write(sock[], encode_frame(ok ? "ACK" : "NACK", ["id" => ack]))
                    ok && (handled += 1)
                    busy[] = false
                    mark_busy(false)
                end
            catch err
                busy[] = false
                mark_busy(false)
                (err isa QueueError || err isa InterruptException) && rethrow()
                stop_requested() && break
                now = time()
                failing_since == 0 && (failing_since = now)
                if now - failing_since > give_up_after
                    throw(QueueError("no connection to the queue broker at $(cfg.host):$(cfg.port) " *
                                     "for $(round(Int, now - failing_since)) s: $(sprint(showerror, err))"))
                end
                log_queue("connection to $(cfg.host):$(cfg.port) lost or refused " *
                          "($(sprint(showerror, err))); again in $(backoff) s")
                sock[] === nothing || close(sock[])
                pause(backoff)
                backoff = min(backoff * 2, max_backoff)
            end
        end
    finally
        mark_busy(false)
        close(watcher)
        s = sock[]
        if s !== nothing && isopen(s)
            disconnect(s)
        end
    end
    handled
end

# A clean DISCONNECT: its receipt means every ACK sent before it has been processed.
function disconnect(sock; timeout::Real=5.0)
    guard = Timer(_ -> close(sock), timeout)
    try
        write(sock, encode_frame("DISCONNECT", ["receipt" => "bye"]))
        while true
            f = read_frame(sock)
            f.command == "RECEIPT" && header(f, "receipt-id") == "bye" && break
        end
    catch
    finally
        close(guard)
        close(sock)
    end
    nothing
end

const PUBLISHER = Ref{Any}(nothing)
const RECEIPTS = Ref(0)

"""
    publish(queue, body; timeout=60.0, max_backoff=5.0)

Send one persistent message to `queue` and wait for the broker's receipt (sent once the broker
has confirmed the message). A failed connection is retried with backoff until `timeout`; after
a lost connection the message may be sent twice (at least once).
"""
function publish(queue::AbstractString, body; timeout::Real=60.0, max_backoff::Real=5.0)
    cfg = queue_config()
    deadline = time() + timeout
    backoff = 0.1
    while true
        try
            PUBLISHER[] === nothing && (PUBLISHER[] = stomp_connect(cfg))
            sock = PUBLISHER[]
            RECEIPTS[] += 1
            id = "p$(RECEIPTS[])"
            guard = Timer(_ -> close(sock), max(0.0, deadline - time()))
            try
                write(sock, encode_frame("SEND", ["destination" => "/queue/" * queue,
                    "persistent" => "true", "receipt" => id], body))
                while true
                    f = read_frame(sock)
                    f.command == "ERROR" && throw(QueueError(error_text(f)))
                    f.command == "RECEIPT" && header(f, "receipt-id") == id && return nothing
                end
            finally
                close(guard)
            end
        catch err
            PUBLISHER[] === nothing || close(PUBLISHER[])
            PUBLISHER[] = nothing
            (err isa QueueError || err isa InterruptException) && rethrow()
            time() + backoff > deadline && throw(QueueError(
                "could not publish to $(repr(queue)) within $(timeout) s: $(sprint(showerror, err))"))
            log_queue("publish to $(repr(queue)) failed ($(sprint(showerror, err))); again in $(backoff) s")
            sleep(backoff)
            backoff = min(backoff * 2, max_backoff)
        end
    end
end

# ---------------------------------------------------------------------------------------------
# HTTP services: a small HTTP/1.1 server on the Sockets standard library, for juliarun.expose.
# Behind juliarun's router every request is already authenticated and authorized; the router
# says who asked in `X-Remote-User` / `X-Remote-Group` and signs it in `X-JuliaRun-Assertion`.

"""
    Request

One HTTP request: `method`, `target` (path and query, as sent), `headers` (names lowercased;
repeated headers joined with ", ") and `body` (bytes).
"""
struct Request
    method::String
    target::String
    headers::Dict{String,String}
    body::Vector{UInt8}
end

"""
    Response(status, body; headers=[...])
    Response(status, stream::Function; headers=[...])

An HTTP response. `body` is a string or bytes; with a function, the response is streamed
(chunked): the function gets a `send(chunk)` to call for each piece, as it is ready.
"""
struct Response
    status::Int
    headers::Vector{Pair{String,String}}
    body::Union{Vector{UInt8},Function}
end
Response(status::Integer, body::AbstractString; headers=Pair{String,String}[]) =
    Response(Int(status), Pair{String,String}[h for h in headers], Vector{UInt8}(body))
Response(status::Integer, body::AbstractVector{UInt8}; headers=Pair{String,String}[]) =
    Response(Int(status), Pair{String,String}[h for h in headers], Vector{UInt8}(body))
Response(status::Integer, body::Function; headers=Pair{String,String}[]) =
    Response(Int(status), Pair{String,String}[h for h in headers], body)

"The user the router authenticated (`X-Remote-User`), or `nothing` when not behind it."
user(req::Request) = get(req.headers, "x-remote-user", nothing)
"The user's groups (every `X-Remote-Group`)."
groups(req::Request) = haskey(req.headers, "x-remote-group") ?
    String.(strip.(split(req.headers["x-remote-group"], ","))) : String[]

const REASONS = Dict(200 => "OK", 201 => "Created", 204 => "No Content", 400 => "Bad Request",
    403 => "Forbidden", 404 => "Not Found", 405 => "Method Not Allowed", 411 => "Length Required",
    413 => "Payload Too Large", 500 => "Internal Server Error")

const MAX_BODY = 16 * 1024 * 1024

function read_request(io::IO)
    line = readline(io)
    isempty(line) && return nothing
    parts = split(line, ' ')
    length(parts) == 3 || return :bad
    headers = Dict{String,String}()
    while true
        h = readline(io)
        isempty(h) && break
        name, value = strip.(split(h, ':'; limit=2))
        key = lowercase(name)
        headers[key] = haskey(headers, key) ? headers[key] * ", " * value : String(value)
    end
    haskey(headers, "transfer-encoding") && return :chunked
    n = parse(Int, get(headers, "content-length", "0"))
    n > MAX_BODY && return :toolarge
    body = n > 0 ? read(io, n) : UInt8[]
    Request(String(parts[1]), String(parts[2]), headers, body)
end

function write_response(io::IO, res::Response, keep::Bool)
    buf = IOBuffer()
    print(buf, "HTTP/1.1 ", res.status, " ", get(REASONS, res.status, "Status"), "\r\n")
    for (k, v) in res.headers
        print(buf, k, ": ", v, "\r\n")
    end
    any(h -> lowercase(h.first) == "content-type", res.headers) ||
        print(buf, "Content-Type: text/plain; charset=utf-8\r\n")
    print(buf, "Connection: ", keep ? "keep-alive" : "close", "\r\n")
    if res.body isa Function
        print(buf, "Transfer-Encoding: chunked\r\n\r\n")
        write(io, take!(buf))
        send(chunk) = begin
            data = chunk isa AbstractString ? Vector{UInt8}(chunk) : chunk
            isempty(data) && return nothing
            write(io, string(length(data), base=16), "\r\n", data, "\r\n")
            flush(io)
            nothing
        end
        res.body(send)
        write(io, "0\r\n\r\n")
    else
        print(buf, "Content-Length: ", length(res.body), "\r\n\r\n")
        write(buf, res.body)
        write(io, take!(buf))
    end
    flush(io)
end

as_response(r::Response) = r
as_response(r::AbstractString) = Response(200, r)
as_response(r::AbstractVector{UInt8}) = Response(200, r)
as_response(r) = Response(200, string(r))

function serve_connection(handler, sock)
    try
        while isopen(sock)
            req = read_request(sock)
            req === nothing && break
            if req isa Symbol
                status = req === :chunked ? 411 : req === :toolarge ? 413 : 400
                write_response(sock, Response(status, "bad request\n"), false)
                break
            end
            keep = lowercase(get(req.headers, "connection", "")) != "close"
            res = try
                as_response(handler(req))
            catch err
                err isa InterruptException && rethrow()
                println(stderr, "JuliaRun.serve: handler failed: ", sprint(showerror, err))
                Response(500, "internal error\n")
            end
            write_response(sock, res, keep)
            keep || break
        end
    catch err
        err isa Base.IOError || err isa EOFError ||
            println(stderr, "JuliaRun.serve: connection: ", sprint(showerror, err))
    finally
        close(sock)
    end
end

"""
    serve(handler, port; host=ip"0.0.0.0")

Serve HTTP on `port` forever, calling `handler(req::Request)` for each request; it returns a
`Response`, a string or bytes (200). Exposed with `juliarun.expose(ctx, job, port=port)`, the
service is reached through juliarun's router by members of the job's tenant only.

    JuliaRun.serve(8000) do req
        "hello \$(JuliaRun.user(req))"
    end
"""
function serve(handler, port::Integer; host=ip"0.0.0.0")
    server = listen(host, port)
    println("JuliaRun.serve: listening on ", host, ":", port)
    flush(stdout)
    try
        while true
            sock = accept(server)
            @async serve_connection(handler, sock)
        end
    finally
        close(server)
    end
end

end # module
