import ArgumentParser
import Foundation
import SecureMQ

struct SubmitCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "submit",
        abstract: "Submit a file (or stdin) to a service; write the results in order and print a summary."
    )

    @OptionGroup var peer: PeerOptions

    @Argument(help: "The payload: a file, or - for stdin.")
    var input: String

    @Option(help: "The service to submit to.")
    var service: String = "sha256"

    @Option(name: .shortAndLong, help: "Where the results go: a file, or - for stdout. (default: discard)")
    var output: String?

    @Option(help: "Payload bytes per fragment. Suffixes K, M.")
    var fragmentSize: String = "256K"

    @Option(help: "Fragments outstanding at once.")
    var window: Int = 32

    @Flag(help: "Print how many fragments each worker processed.")
    var perWorker = false

    @Flag(help: "Print no progress bar, even on a terminal.")
    var quiet = false

    func validate() throws {
        _ = try ByteSize.parse(fragmentSize, option: "--fragment-size")
        guard window >= 1 else { throw ValidationError("--window must be at least 1") }
    }

    func run() async throws {
        let (brokerKey, keyPair, logger) = try peer.load()
        Cleanup.onTerminationSignals()
        var options = Client.Options()
        options.fragmentSize = try ByteSize.parse(fragmentSize, option: "--fragment-size")
        options.maxFragmentSize = max(options.maxFragmentSize, options.fragmentSize)
        options.window = window
        options.connection = peer.connectionOptions

        // stdin has no size up front; the fragment count is part of every header, so spool it.
        var path = input
        var spooled: (URL, Int)?
        if input == "-" {
            // A private spool (mkstemp: 0600, an unpredictable name), removed on every path.
            var template = Array((NSTemporaryDirectory() + "/smq-stdin-XXXXXX").utf8CString)
            let fd = mkstemp(&template)
            guard fd >= 0 else { fail("cannot make a temporary file for stdin: \(String(cString: strerror(errno)))") }
            let url = URL(fileURLWithPath: template.withUnsafeBufferPointer { String(cString: $0.baseAddress!) })
            let token = Cleanup.register { unlink(url.path) }
            spooled = (url, token)
            let handle = FileHandle(fileDescriptor: fd, closeOnDealloc: true)
            while let chunk = try FileHandle.standardInput.read(upToCount: 1 << 20), !chunk.isEmpty { handle.write(chunk) }
            try handle.close()
            path = url.path
        }
        defer { if let spooled { Cleanup.run(spooled.1) } }

        var sink: FileHandle?
        if let output {
            if output == "-" { sink = FileHandle.standardOutput } else {
                // open(2), not FileManager.createFile: that one writes a temporary file and renames
                // it over the path, which would replace /dev/null or a FIFO with a regular file.
                let fd = open(output, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
                guard fd >= 0 else { fail("cannot open \(PeerText.escaped(output)) for writing: \(String(cString: strerror(errno)))") }
                sink = FileHandle(fileDescriptor: fd, closeOnDealloc: true)
            }
        }
        let progress = !quiet && isatty(STDERR_FILENO) != 0

        let started = ContinuousClock.now
        do {
            let client = try await Client.connect(to: peer.broker, brokerKey: brokerKey, keyPair: keyPair,
                                                  options: options, logger: logger)
            let job = try await client.submit(.file(path), to: service)
            var done = 0
            for try await result in job {
                sink?.write(Data(result.body))
                done += 1
                if progress && (done % 16 == 0 || done == job.fragmentCount) {
                    let width = 30, filled = width * done / max(1, job.fragmentCount)
                    FileHandle.standardError.write(Data("\r[\(String(repeating: "#", count: filled))\(String(repeating: ".", count: width - filled))] \(done)/\(job.fragmentCount)".utf8))
                }
            }
            if progress { FileHandle.standardError.write(Data("\n".utf8)) }
            let summary = await job.summary()
            let seconds = Double((ContinuousClock.now - started).components.attoseconds) / 1e18 + Double((ContinuousClock.now - started).components.seconds)
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
            if perWorker {
                for (tag, count) in summary.perWorker.sorted(by: { $0.value > $1.value }) {
                    FileHandle.standardError.write(Data("worker \(WorkerTag.fingerprint(tag)): \(count) fragments\n".utf8))
                }
            }
            await client.close()
        } catch {
            fail(describe(error))
        }
    }
}

enum WorkerTag {
    /// The fingerprint of the key whose first 8 bytes are `tag` (what the broker logs).
    static func fingerprint(_ tag: UInt64) -> String {
        let bytes = (0..<8).map { UInt8(truncatingIfNeeded: tag >> (56 - 8 * UInt64($0))) }
        return (try? Z85.encode(bytes)) ?? String(tag, radix: 16)
    }
}
