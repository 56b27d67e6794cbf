import ArgumentParser
import Foundation
import Logging
import Synchronization
import SecureMQ

struct SubmitCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "submit",
        abstract: "Submit a file (or stdin) to a service; write the results in order and print a summary.",
        discussion: """
            --output F is written to a temporary file beside F and renamed over F only when every \
            result is in: a failed or interrupted submit leaves F as it was. Standard input (-) is \
            spooled to an unlinked private file first, up to --stdin-limit bytes.
            """
    )

    @OptionGroup var peer: PeerOptions

    @Argument(help: "The payload: a file, or - for stdin.")
    var input: String

    @Option(help: "The service to submit to.")
    var service: String = "sha256"

    @Option(name: .shortAndLong, help: "Where the results go: a file, or - for stdout. (default: discard)")
    var output: String?

    @Option(help: "Payload bytes per fragment, at most the broker's max-fragment (default 1M). Suffixes K, M.")
    var fragmentSize: String = "256K"

    @Option(help: "Fragments outstanding at once (1…65536).")
    var window: Int = 32

    @Option(help: "Seconds the job may take; then it fails with 408 and the broker drops the rest. (default: no deadline)")
    var deadline: Double?

    @Option(help: "PING interval in milliseconds while the job runs; a broker silent for 3 intervals is left and its fragments move to another broker (100…60000).")
    var heartbeatMs: Int = 2500

    @Option(help: "The most bytes read from stdin (-); a longer stream fails. Suffixes K, M, G.")
    var stdinLimit: String = "4G"

    @Flag(help: "Print how many fragments each worker processed.")
    var perWorker = false

    @Option(help: "A directory of public certificates (e.g. certs/allowed): --per-worker names workers by their certificates' names.")
    var workerNames: String?

    @Flag(help: "Print nothing but errors (and what --per-worker asks for): no progress line, no summary.")
    var quiet = false

    @Flag(help: "Print the summary as one JSON object (on stdout, or on stderr when --output is -).")
    var json = false

    func validate() throws {
        _ = try OptionCheck.size(fragmentSize, option: "--fragment-size", 1...OptionCheck.maxFragment)
        try OptionCheck.integer(window, option: "--window", 1...65_536)
        try OptionCheck.integer(heartbeatMs, option: "--heartbeat-ms", 100...60_000)
        if let deadline { try OptionCheck.seconds(deadline, option: "--deadline") }
        _ = try OptionCheck.size(stdinLimit, option: "--stdin-limit", 1...(1 << 50))
    }

    func run() async throws {
        let (brokers, keyPair, logger) = try peer.load()
        let progress = SubmitProgress(shown: !quiet && !json && isatty(STDERR_FILENO) != 0)
        let names = try loadWorkerNames()
        Cleanup.onTerminationSignals()
        var options = Client.Options()
        options.fragmentSize = try ByteSize.parse(fragmentSize, option: "--fragment-size")
        options.maxFragmentSize = max(options.maxFragmentSize, options.fragmentSize)
        options.window = window
        options.heartbeatInterval = .milliseconds(heartbeatMs)
        options.learnBrokerLimits = true  // an oversized fragment fails at once with 413 (C47)
        options.connection = peer.connectionOptions()

        // stdin has no size up front; the fragment count is part of every header, so spool it.
        let path = input == "-" ? try StdinSpool.spool(limit: ByteSize.parse(stdinLimit, option: "--stdin-limit")) : input

        let sink: OutputSink?
        do { sink = try output.map { try OutputSink(path: $0) } } catch { fail(describe(error)) }
        // On Ctrl-C or SIGTERM (Cleanup runs this before exiting 130/143): end the progress line,
        // say what was done, leave --output as it was.
        if let sink { Cleanup.register { sink.abandon() } }
        Cleanup.onInterrupt { progress.interrupted(output: sink) }

        let started = ContinuousClock.now
        var connected: Client?
        do {
            let client = try await Client.connect(to: brokers, keyPair: keyPair,
                                                  options: options, logger: logger)
            connected = client
            // A typo in the service name would otherwise wait the broker's whole service
            // timeout before a bare 404: say at once what the broker knows (C46).
            if let known = try? await client.services(), !known.contains(service) {
                FileHandle.standardError.write(Data("warning: no worker serves '\(PeerText.escaped(service))' now (known: \(known.isEmpty ? "none" : known.joined(separator: ", "))); waiting up to the broker's service timeout for one\n".utf8))
            }
            let job = try await client.submit(.file(path), to: service, deadline: deadline.map(OptionCheck.duration(seconds:)))
            progress.start(fragments: job.fragmentCount, bytes: job.payloadLength)
            let fragmentSize = options.fragmentSize
            for try await result in job {
                try sink?.write(result.body)
                progress.advance(payloadBytes: min(fragmentSize, job.payloadLength - result.index * fragmentSize), resultBytes: result.body.count)
            }
            try sink?.commit()
            progress.finish()
            let summary = await job.summary()
            let elapsed = ContinuousClock.now - started
            let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
            let workers = summary.perWorker.sorted { $0.value > $1.value }.map { (name: names[$0.key] ?? WorkerTag.fingerprint($0.key), fragments: $0.value) }
            if json {
                let object: [String: Any] = [
                    "fragments": summary.fragments, "payload_bytes": summary.payloadBytes, "result_bytes": summary.resultBytes,
                    "seconds": seconds, "payload_digest": summary.payloadDigest, "result_digest": summary.resultDigest,
                    "busy_resends": summary.busyResends, "resubmitted": summary.resubmitted, "duplicates": summary.duplicates,
                    "workers": workers.map { ["name": $0.name, "fragments": $0.fragments] },
                ]
                let data = try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])
                (output == "-" ? FileHandle.standardError : FileHandle.standardOutput).write(data + Data("\n".utf8))
            } else if !quiet {
                let report = """
                    fragments:      \(summary.fragments)
                    payload:        \(ByteSize.format(summary.payloadBytes))
                    results:        \(ByteSize.format(summary.resultBytes))
                    throughput:     \(String(format: "%.1f", Double(summary.payloadBytes) / 1_048_576 / max(seconds, 1e-9))) MiB/s (\(String(format: "%.3f", seconds)) s)
                    payload digest: \(summary.payloadDigest)
                    result digest:  \(summary.resultDigest)
                    busy resends:   \(summary.busyResends)
                    resubmitted:    \(summary.resubmitted)
                    duplicates:     \(summary.duplicates)
                    """
                FileHandle.standardError.write(Data((report + "\n").utf8))
            }
            // Asked for by name, so printed even with --quiet.
            if perWorker && !json {
                for worker in workers {
                    FileHandle.standardError.write(Data("worker \(worker.name): \(worker.fragments) fragments\n".utf8))
                }
            }
            await client.close()
        } catch {
            progress.finish()
            var message = describe(error)
            if let error = error as? SecureMQError, error.status == 404 {
                if let known = try? await connected?.services() {
                    message += " (known: \(known.isEmpty ? "none" : known.joined(separator: ", ")))"
                } else {
                    message += " (check the service name, or start a worker for it)"
                }
            }
            if let sink { message += "; " + sink.abandon() }
            fail(message)
        }
    }
}

extension SubmitCommand {
    /// Worker tag → certificate name, from `--worker-names DIR` (the broker's allowlist directory
    /// is the usual choice): what the demo prints, for any deployment.
    func loadWorkerNames() throws -> [UInt64: String] {
        guard let workerNames else { return [:] }
        do {
            let allowlist = try Allowlist(directory: workerNames, logger: Logger(label: "smq.names"))
            var names: [UInt64: String] = [:]
            for entry in allowlist.entries { names[entry.publicKey.tag] = PeerText.escaped(entry.name) }
            return names
        } catch {
            fail("cannot read --worker-names \(PeerText.escaped(workerNames)): \(PeerText.escaped("\(error)"))")
        }
    }
}

/// The progress line on a terminal, like curl's: bytes done of the total, percent, rate and time
/// left, fitted to the terminal's width and redrawn at most 10 times a second. Its counters are
/// also read by the signal handler's thread (Ctrl-C), hence the lock.
final class SubmitProgress: Sendable {
    private struct State {
        var fragments = 0, done = 0, totalBytes = 0, payloadDone = 0, resultBytes = 0
        var lineOpen = false
        var started = ContinuousClock.now
        var lastDrawn: ContinuousClock.Instant?
    }
    private let state = Mutex(State())
    let shown: Bool

    init(shown: Bool) { self.shown = shown }

    func start(fragments: Int, bytes: Int) {
        state.withLock {
            $0.fragments = fragments
            $0.totalBytes = bytes
            $0.started = .now
        }
    }

    func advance(payloadBytes: Int, resultBytes: Int) {
        let line: String? = state.withLock { state in
            state.done += 1
            state.payloadDone += max(0, payloadBytes)
            state.resultBytes += resultBytes
            guard shown else { return nil }
            let now = ContinuousClock.now
            let last = state.done == state.fragments
            if let drawn = state.lastDrawn, now - drawn < .milliseconds(100), !last { return nil }
            state.lastDrawn = now
            state.lineOpen = true
            // ESC [ K clears what a longer earlier line left at the end.
            return "\r" + Self.line(done: state.payloadDone, total: state.totalBytes, elapsed: now - state.started, width: Self.terminalWidth()) + "\u{1B}[K"
        }
        if let line { FileHandle.standardError.write(Data(line.utf8)) }
    }

    /// `12.5 MiB / 64.0 MiB  19%  31.2 MiB/s  0:02 left  [#####.........]`, fitted to `width`.
    static func line(done: Int, total: Int, elapsed: Duration, width: Int) -> String {
        let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
        let rate = seconds > 0 ? Double(done) / seconds : 0
        let percent = total > 0 ? min(100, done * 100 / total) : 100
        let left: String
        if done >= total { left = "done" } else if rate > 0 {
            let remaining = Int((Double(total - done) / rate).rounded(.up))
            left = remaining >= 3600 ? "\(remaining / 3600)h\(String(format: "%02d", remaining / 60 % 60))m left"
                : "\(remaining / 60):\(String(format: "%02d", remaining % 60)) left"
        } else { left = "--:-- left" }
        let head = "\(ByteSize.format(done)) / \(ByteSize.format(total))  \(percent)%"
        let rateText = "\(ByteSize.format(Int(rate)))/s"
        // What fits, most useful first: the bar goes first, then the rate, then the time left.
        var text = [[head, rateText, left], [head, left], [head]].map { $0.joined(separator: "  ") }
            .first { $0.count + 1 <= width } ?? head
        let room = width - 1 - text.count - 4  // "  [" and "]", and the last column left free
        if room >= 10 {
            let filled = room * percent / 100
            text += "  [" + String(repeating: "#", count: filled) + String(repeating: ".", count: room - filled) + "]"
        }
        return String(text.prefix(max(1, width - 1)))
    }

    /// Columns of the terminal on stderr (TIOCGWINSZ), else $COLUMNS, else 80.
    static func terminalWidth() -> Int {
        var size = winsize()
        if ioctl(STDERR_FILENO, UInt(TIOCGWINSZ), &size) == 0, size.ws_col > 0 { return Int(size.ws_col) }
        if let columns = ProcessInfo.processInfo.environment["COLUMNS"].flatMap(Int.init), columns > 0 { return columns }
        return 80
    }

    /// Ends the progress line, if one is open.
    func finish() {
        let open = state.withLock { state in
            defer { state.lineOpen = false }
            return state.lineOpen
        }
        if open { FileHandle.standardError.write(Data("\n".utf8)) }
    }

    /// On SIGINT/SIGTERM: ends the line and says what was done (the sink's clean-up has run).
    func interrupted(output: OutputSink?) {
        finish()
        let (done, fragments, bytes) = state.withLock { ($0.done, $0.fragments, $0.resultBytes) }
        var line = "interrupted after \(done) of \(fragments) results (\(ByteSize.format(bytes)))"
        if let output { line += "; " + output.abandon() }
        FileHandle.standardError.write(Data("\(line)\n".utf8))
    }
}

/// `--output F`: results go to a private temporary file beside F (same directory, so the final
/// rename is atomic; O_EXCL, mode 0600 or F's mode), renamed over F only when every result is
/// in. A failure or an interruption removes the temporary file and leaves F byte for byte as it
/// was. Standard output, and an F that is not a regular file (/dev/null, a FIFO), are written
/// directly: there is nothing to keep and nothing to rename over.
final class OutputSink: Sendable {
    private struct State {
        var fd: Int32
        var temporary: String?
        var done = false
        /// F's mode, or what a new file gets under the umask; the partial file stays 0600.
        var finalMode: mode_t = 0o644
    }
    private let state: Mutex<State>
    let path: String

    init(path: String) throws {
        self.path = path
        if path == "-" {
            state = Mutex(State(fd: STDOUT_FILENO, temporary: nil))
            return
        }
        var info = stat()
        let exists = stat(path, &info) == 0
        if exists && (info.st_mode & S_IFMT) != S_IFREG {
            let fd = open(path, O_WRONLY | O_CLOEXEC)
            guard fd >= 0 else { throw SinkError("cannot open \(PeerText.escaped(path)) for writing: \(String(cString: strerror(errno)))") }
            state = Mutex(State(fd: fd, temporary: nil))
            return
        }
        let url = URL(fileURLWithPath: path)
        let directory = url.deletingLastPathComponent().path
        var template = Array("\(directory)/.\(url.lastPathComponent).smq-partial-XXXXXX".utf8CString)
        let fd = mkstemp(&template)  // O_EXCL, 0600
        guard fd >= 0 else {
            throw SinkError("cannot write beside \(PeerText.escaped(path)) (a temporary file in \(PeerText.escaped(directory))): \(String(cString: strerror(errno)))")
        }
        var finalMode = info.st_mode & 0o7777
        if !exists {
            let mask = umask(0); umask(mask)
            finalMode = 0o666 & ~mask
        }
        let temporary = template.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
        state = Mutex(State(fd: fd, temporary: temporary, finalMode: finalMode))
    }

    func write(_ bytes: [UInt8]) throws {
        try state.withLock { state in
            guard !state.done else { return }
            try bytes.withUnsafeBytes { raw in
                var offset = 0
                while offset < raw.count {
                    let n = Glibc.write(state.fd, raw.baseAddress! + offset, raw.count - offset)
                    if n < 0 && errno == EINTR { continue }
                    guard n > 0 else { throw SinkError("writing \(PeerText.escaped(path)) failed: \(String(cString: strerror(errno)))") }
                    offset += n
                }
            }
        }
    }

    /// Every result is in: the temporary file becomes F.
    func commit() throws {
        try state.withLock { state in
            guard !state.done else { return }
            state.done = true
            guard let temporary = state.temporary else {
                if state.fd != STDOUT_FILENO { close(state.fd) }
                return
            }
            let synced = fchmod(state.fd, state.finalMode) == 0 && fsync(state.fd) == 0
            close(state.fd)
            guard synced, rename(temporary, path) == 0 else {
                let reason = String(cString: strerror(errno))
                unlink(temporary)
                throw SinkError("cannot replace \(PeerText.escaped(path)): \(reason); it was left as it was")
            }
        }
    }

    /// The job did not complete: removes the temporary file. Returns the sentence for the user.
    /// Safe to call more than once, from any thread.
    @discardableResult
    func abandon() -> String {
        state.withLock { state in
            let shown = PeerText.escaped(path)
            guard let temporary = state.temporary else {
                return path == "-" ? "the results written so far went to standard output" : "\(shown) has the results written so far"
            }
            if !state.done {
                state.done = true
                close(state.fd)
                unlink(temporary)
            }
            return "\(shown) was left as it was; the partial output was removed"
        }
    }
}

struct SinkError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// Standard input, spooled so its length is known before the first SUBMIT (PROTOCOL.md C18).
enum StdinSpool {
    /// Copies stdin into a private file (mkstemp, 0600) that is unlinked as soon as it is
    /// complete: nothing is left behind however the job ends, and the job reads it through
    /// /proc/self/fd.
    /// - Returns: the path the job reads.
    static func spool(limit: Int) -> String {
        var template = Array((NSTemporaryDirectory() + "/smq-stdin-XXXXXX").utf8CString)
        let fd = mkstemp(&template)
        guard fd >= 0 else { fail("cannot make a temporary file for stdin: \(String(cString: strerror(errno)))") }
        let directory = NSTemporaryDirectory()
        let path = template.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
        // While stdin is read the file has a name (0600), removed by Ctrl-C/SIGTERM or `fail`;
        // once spooled it is unlinked and read through the open descriptor.
        let token = Cleanup.register { unlink(path) }
        defer { Cleanup.run(token) }
        var buffer = [UInt8](repeating: 0, count: 1 << 20)
        var total = 0
        while true {
            let n = buffer.withUnsafeMutableBytes { read(STDIN_FILENO, $0.baseAddress!, $0.count) }
            if n < 0 && errno == EINTR { continue }
            if n < 0 { fail("reading stdin failed: \(String(cString: strerror(errno)))") }
            if n == 0 { break }
            guard total + n <= limit else {
                close(fd)
                fail("stdin is longer than --stdin-limit (\(ByteSize.format(limit))): raise --stdin-limit, or give a file instead of -")
            }
            var offset = 0
            while offset < n {
                let w = buffer.withUnsafeBytes { write(fd, $0.baseAddress! + offset, n - offset) }
                if w < 0 && errno == EINTR { continue }
                guard w > 0 else {
                    let reason = String(cString: strerror(errno))
                    close(fd)
                    fail("spooling stdin to \(PeerText.escaped(directory)) failed after \(ByteSize.format(total + offset)): \(reason) (set TMPDIR to a disk with room, or give a file instead of -)")
                }
                offset += w
            }
            total += n
        }
        return "/proc/self/fd/\(fd)"
    }
}

enum WorkerTag {
    /// The fingerprint of the key whose first 8 bytes are `tag` (what the broker logs).
    static func fingerprint(_ tag: UInt64) -> String {
        let bytes = (0..<8).map { UInt8(truncatingIfNeeded: tag >> (56 - 8 * UInt64($0))) }
        return (try? Z85.encode(bytes)) ?? String(tag, radix: 16)
    }
}
