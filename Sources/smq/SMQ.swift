import ArgumentParser
import Foundation
import Synchronization
import Logging
import SecureMQ

@main
struct SMQ: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "smq",
        abstract: "SecureMQ's client and worker tool: run a worker, submit a payload, check a broker, run the demo.",
        version: SecureMQVersion.current,
        subcommands: [WorkerCommand.self, SubmitCommand.self, PingCommand.self, StatusCommand.self, DemoCommand.self, BenchCommand.self]
    )
}

/// Where to find the broker and who we are: shared by `worker` and `submit`.
/// A flag wins over its environment variable, which wins over the default (issue 13): set
/// `SMQ_BROKER`, `SMQ_BROKER_KEY` and `SMQ_CERT` once instead of repeating three flags.
struct PeerOptions: ParsableArguments {
    @Option(name: .customLong("broker"), help: "The broker's endpoint. (default: $SMQ_BROKER, else tcp://127.0.0.1:5555)")
    var brokerFlag: String?

    @Option(name: .customLong("broker-key"), help: "The broker's public certificate. (default: $SMQ_BROKER_KEY, else certs/broker.key)")
    var brokerKeyFlag: String?

    @Option(name: .customLong("cert"), help: "Our secret certificate (mode 0600); its public key must be on the broker's allowlist. (default: $SMQ_CERT)")
    var certFlag: String?

    var broker: String { brokerFlag ?? Self.environment("SMQ_BROKER") ?? "tcp://127.0.0.1:5555" }
    var brokerKey: String { brokerKeyFlag ?? Self.environment("SMQ_BROKER_KEY") ?? "certs/broker.key" }
    var cert: String { certFlag ?? Self.environment("SMQ_CERT") ?? "" }

    /// An environment variable, unless unset or empty.
    static func environment(_ name: String) -> String? {
        guard let value = ProcessInfo.processInfo.environment[name], !value.isEmpty else { return nil }
        return value
    }

    @Option(help: "Seconds to wait for the broker before giving up.")
    var connectTimeout: Double = 10

    @Option(help: "Log level: trace, debug, info, notice, warning, error.")
    var logLevel: String = "warning"

    func validate() throws {
        guard Logger.Level(rawValue: logLevel) != nil else { throw ValidationError("--log-level must be trace, debug, info, notice, warning or error") }
        try OptionCheck.seconds(connectTimeout, option: "--connect-timeout")
        guard !cert.isEmpty else { throw ValidationError("Missing expected argument '--cert <cert>' (or set SMQ_CERT to our secret certificate)") }
    }

    func load() throws -> (brokerKey: PublicKey, keyPair: KeyPair, logger: Logger) {
        let level = Logger.Level(rawValue: logLevel) ?? .warning
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        do {
            let broker = try Certificate.load(path: brokerKey)
            let mine = try Certificate.load(path: cert)
            return (broker.publicKey, try mine.keyPair(), Logger(label: "smq"))
        } catch {
            // A certificate error may quote the file: its name and metadata are not ours.
            fail(PeerText.escaped("\(error)"))
        }
    }

    /// A client fails at once when nothing listens at the endpoint (a typo, a broker not
    /// started); a worker (`waitForBroker`) waits the connect timeout for its broker to come up.
    func connectionOptions(waitForBroker: Bool = false) -> ConnectionOptions {
        var options = ConnectionOptions()
        options.connectTimeout = OptionCheck.duration(seconds: connectTimeout)
        if waitForBroker { options.refusedConnectionLimit = nil }
        return options
    }
}

/// Prints `Error: …` to stderr and exits 1: user mistakes get a sentence, not a stack trace.
/// Runs the registered clean-ups first (`exit` skips every `defer`).
func fail(_ message: String) -> Never {
    Cleanup.runAll()
    FileHandle.standardError.write(Data("Error: \(message)\n".utf8))
    exit(1)
}

/// What must not outlive the process whichever way it ends: temporary files with payloads or
/// secret keys, child processes. `fail` and the signal handlers run it; normal paths run it too.
enum Cleanup {
    private static let actions = Mutex<[(Int, @Sendable () -> Void)]>([])
    private static let counter = Atomic<Int>(0)

    /// Registers `action`; returns a token to run it early with ``run(_:)``.
    @discardableResult
    static func register(_ action: @escaping @Sendable () -> Void) -> Int {
        let token = counter.add(1, ordering: .relaxed).newValue
        actions.withLock { $0.append((token, action)) }
        return token
    }

    /// Runs one clean-up now (and never again).
    static func run(_ token: Int) {
        let action = actions.withLock { list -> (@Sendable () -> Void)? in
            guard let index = list.firstIndex(where: { $0.0 == token }) else { return nil }
            return list.remove(at: index).1
        }
        action?()
    }

    /// Runs every clean-up, newest first.
    static func runAll() {
        let all = actions.withLock { list -> [(Int, @Sendable () -> Void)] in
            defer { list.removeAll() }
            return list
        }
        for (_, action) in all.reversed() { action() }
    }

    private static let interruptReport = Mutex<(@Sendable () -> Void)?>(nil)

    /// What to tell the user when a signal ends the process (what was done, what was kept);
    /// runs after the clean-ups. `fail` does not run it: it has its own sentence.
    static func onInterrupt(_ report: @escaping @Sendable () -> Void) {
        interruptReport.withLock { $0 = report }
    }

    /// On SIGINT or SIGTERM: clean up, then exit with 128 + the signal, as a shell expects.
    static func onTerminationSignals() {
        for number in [SIGINT, SIGTERM] {
            signal(number, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: number, queue: .global())
            source.setEventHandler {
                runAll()
                interruptReport.withLock { $0 }?()
                exit(128 + number)
            }
            source.resume()
            SignalSources.keep([source])
        }
    }
}

enum ByteSize {
    /// A size option (`256K`, `1M`), or a validation error naming the option.
    static func parse(_ text: String, option: String) throws -> Int {
        guard let bytes = ByteCount.parse(text) else {
            throw ValidationError("\(option) must be a positive size such as 65536, 256K or 1M; got '\(text)'")
        }
        return bytes
    }

    static func format(_ bytes: Int) -> String { ByteCount.format(bytes) }
}

/// `print` buffers when stdout is a pipe; the demo and the tests read lines as they come.
func flushStandardOutput() {
    fflush(nil)  // every C stream: avoids touching the non-Sendable `stdout` global
}

/// The sentence to show for an error: the library's own message where it has one (the library
/// escapes what peers wrote into it), anything else escaped here, so an error is one printable
/// line whatever text it quotes.
func describe(_ error: any Error) -> String {
    if let error = error as? SecureMQError { return error.message }
    return PeerText.escaped("\(error)")
}
