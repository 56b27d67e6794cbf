import ArgumentParser
import Foundation
import Glibc
import SecureMQ

struct WorkerCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "worker",
        abstract: "Serve a built-in service (echo, sha256, upper) at the broker until stopped."
    )

    @OptionGroup var peer: PeerOptions

    @Option(help: "The service to join.")
    var service: String = "sha256"

    @Option(help: "The built-in handler: echo, sha256 or upper (default: the service's name).")
    var handler: String?

    @Option(help: "Fragments held at once; the broker grants min(credit, weight × base window), so the weight decides a busy worker's share.")
    var credit: Int = 256

    @Option(help: "Milliseconds to sleep per fragment, to play a slower machine.")
    var delayMs: Int = 0

    @Option(help: "Heartbeat interval in milliseconds.")
    var heartbeatMs: Int = 2500

    @Option(help: "Testing aid: exit abruptly (as a crash) when given the fragment with this index.")
    var crashOnIndex: Int?

    @Option(help: "Testing aid: exit abruptly (as a crash) when a fragment starts with this text (a poison input).")
    var crashOnPrefix: String?

    func validate() throws {
        guard BuiltinService(rawValue: handler ?? service) != nil else {
            throw ValidationError("no built-in handler '\(handler ?? service)': use --handler echo, sha256 or upper")
        }
        try OptionCheck.integer(credit, option: "--credit", 1...65_536)
        try OptionCheck.integer(delayMs, option: "--delay-ms", 0...3_600_000)
        try OptionCheck.integer(heartbeatMs, option: "--heartbeat-ms", 100...60_000)  // §4.1
        if let crashOnIndex { try OptionCheck.integer(crashOnIndex, option: "--crash-on-index", 0...Int(UInt32.max)) }
    }

    func run() async throws {
        let (brokers, keyPair, logger) = try peer.load()
        let builtin = BuiltinService(rawValue: handler ?? service)!
        var options = Worker.Options()
        options.credit = credit
        options.heartbeatInterval = .milliseconds(heartbeatMs)
        options.connection = peer.connectionOptions(waitForBroker: true)
        let worker: Worker
        do {
            worker = try await Worker.connect(to: brokers, keyPair: keyPair, service: service,
                                              options: options, logger: logger)
        } catch {
            fail(error.message)
        }
        print("worker \(keyPair.publicKey.fingerprint) connected: asked for service \(service), credit \(credit)\(brokers.count > 1 ? " split over \(brokers.count) brokers" : "")")
        flushStandardOutput()
        let delay = delayMs
        let crashIndex = crashOnIndex
        let crashPrefix = crashOnPrefix.map { Array($0.utf8) }
        // SIGTERM/SIGINT: leave the service (the broker requeues at once), then exit.
        let stop = Task {
            await waitForTerminationSignal()
            await worker.close()
        }
        let crashes: @Sendable (WorkHeader, UnsafeRawBufferPointer) -> Bool = { header, body in
            (crashIndex.map { header.index == $0 } ?? false) || (crashPrefix.map { body.starts(with: $0) } ?? false)
        }
        do throws(SecureMQError) {
            if delay > 0 {
                // A slow machine: handlers sleep concurrently, up to the credit.
                try await worker.run { item in
                    if item.body.withUnsafeBytes({ crashes(item.header, $0) }) { Glibc.exit(70) }
                    // A handler that gives up at the client's deadline (C45): its result would
                    // come after the client stopped waiting.
                    if let left = item.timeLeft, left < .milliseconds(delay) {
                        let ms = left.components.seconds * 1000 + left.components.attoseconds / 1_000_000_000_000_000
                        print("fragment \(item.index) of job \(item.jobID): \(ms) ms left before its deadline, less than the \(delay) ms it takes; giving up at the deadline")
                        flushStandardOutput()
                        try await Task.sleep(for: left)
                        throw WorkRejection(code: 408, reason: "the deadline passed before the work was done (\(ms) ms left when it arrived)")
                    }
                    try await Task.sleep(for: .milliseconds(delay))
                    return builtin.handle(item.body)
                }
            } else {
                // The built-in services are quick: run them on the socket thread, in place.
                try await worker.serveInPlace { header, body in
                    if crashes(header, body) { Glibc.exit(70) }
                    return builtin.handle(body)
                }
            }
        } catch {
            fail(error.message)
        }
        stop.cancel()
    }
}

/// Suspends until SIGTERM or SIGINT arrives.
func waitForTerminationSignal() async {
    signal(SIGTERM, SIG_IGN)
    signal(SIGINT, SIG_IGN)
    await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
        let once = OnceFlag()
        var sources: [any DispatchSourceSignal] = []
        for number in [SIGTERM, SIGINT] {
            let source = DispatchSource.makeSignalSource(signal: number, queue: .global())
            source.setEventHandler {
                if once.claim() { continuation.resume() }
            }
            source.resume()
            sources.append(source)
        }
        SignalSources.keep(sources)
    }
}

final class OnceFlag: @unchecked Sendable {
    private let lock = NSLock()
    private var done = false
    func claim() -> Bool {
        lock.lock(); defer { lock.unlock() }
        if done { return false }
        done = true
        return true
    }
}

/// Signal sources must stay alive for the process's life.
enum SignalSources {
    nonisolated(unsafe) static var kept: [any DispatchSourceSignal] = []
    static func keep(_ sources: [any DispatchSourceSignal]) { kept.append(contentsOf: sources) }
}
