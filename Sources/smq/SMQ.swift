import ArgumentParser
import Foundation
import Glibc
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

/// Where to find the brokers and who we are: shared by every command that connects.
/// A flag wins over its environment variable, which wins over the default (issue 13): set
/// `SMQ_BROKER`, `SMQ_BROKER_KEY` and `SMQ_CERT` once instead of repeating three flags. Several
/// brokers (issue 12): `--broker` repeated, or `--brokers FILE`; the rules are ``BrokerList``'s.
struct PeerOptions: ParsableArguments {
    @Option(name: .customLong("broker"), help: ArgumentHelp(
        "A broker's endpoint; repeat for several brokers. (default: $SMQ_BROKER, comma-separated, else tcp://127.0.0.1:5555)",
        valueName: "endpoint"))
    var brokerFlags: [String] = []

    @Option(name: .customLong("broker-key"), help: ArgumentHelp(
        "A broker's public certificate: one for all brokers, or one per --broker in the same order. (default: $SMQ_BROKER_KEY, comma-separated, else certs/broker.key)",
        valueName: "file"))
    var brokerKeyFlags: [String] = []

    @Option(name: .customLong("brokers"), help: ArgumentHelp(
        "A file naming the brokers, one 'ENDPOINT KEYFILE' per line (# comments and blank lines allowed; a relative KEYFILE is relative to the file's directory). Replaces --broker, --broker-key and their variables.",
        valueName: "file"))
    var brokersFile: String?

    @Option(name: .customLong("cert"), help: "Our secret certificate (mode 0600); its public key must be on the broker's allowlist. (default: $SMQ_CERT)")
    var certFlag: String?

    @Flag(help: "Print the effective brokers, keys and settings (and where each came from), then exit without connecting.")
    var printConfig = false

    var cert: String { certFlag ?? Self.environment("SMQ_CERT") ?? "" }

    /// An environment variable, unless unset or empty.
    static func environment(_ name: String) -> String? {
        guard let value = ProcessInfo.processInfo.environment[name], !value.isEmpty else { return nil }
        return value
    }

    /// The brokers from the flags, `--brokers FILE` or the environment.
    func brokerList() throws(BrokerList.Failure) -> BrokerList {
        try BrokerList.resolve(endpointFlags: brokerFlags, keyFlags: brokerKeyFlags, file: brokersFile,
                               environment: ProcessInfo.processInfo.environment, readFile: BrokerList.read)
    }

    @Option(help: "Seconds to wait for the broker before giving up.")
    var connectTimeout: Double = 10

    @Option(help: "Log level: trace, debug, info, notice, warning, error.")
    var logLevel: String = "warning"

    func validate() throws {
        guard Logger.Level(rawValue: logLevel) != nil else { throw ValidationError("--log-level must be trace, debug, info, notice, warning or error") }
        try OptionCheck.seconds(connectTimeout, option: "--connect-timeout")
        do { _ = try brokerList() } catch { throw ValidationError(error.description) }
        guard !cert.isEmpty || printConfig else { throw ValidationError("Missing expected argument '--cert <cert>' (or set SMQ_CERT to our secret certificate)") }
    }

    /// The brokers (keys loaded), our key pair and the logger; with `--print-config`, prints the
    /// effective settings and exits 0 instead.
    func load() throws -> (brokers: [BrokerAddress], keyPair: KeyPair, logger: Logger) {
        let list: BrokerList
        do { list = try brokerList() } catch { fail(error.description) }
        if printConfig {
            print(configurationReport(list))
            flushStandardOutput()
            Glibc.exit(0)
        }
        let level = Logger.Level(rawValue: logLevel) ?? .warning
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        do {
            var keys: [String: PublicKey] = [:]
            var brokers: [BrokerAddress] = []
            for entry in list.entries {
                let key = try keys[entry.keyPath] ?? Certificate.load(path: entry.keyPath).publicKey
                keys[entry.keyPath] = key
                brokers.append(BrokerAddress(entry.endpoint, key: key))
            }
            let mine = try Certificate.load(path: cert)
            return (brokers, try mine.keyPair(), Logger(label: "smq"))
        } catch {
            // A certificate error may quote the file: its name and metadata are not ours.
            fail(PeerText.escaped("\(error)"))
        }
    }

    /// What `--print-config` shows: each broker as a brokers-file line, then our settings.
    func configurationReport(_ list: BrokerList) -> String {
        let source = list.endpointSource == list.keySource ? list.endpointSource : "\(list.endpointSource), keys from \(list.keySource)"
        var lines = ["brokers (from \(PeerText.escaped(source))):"]
        lines += list.entries.map { "  \(PeerText.escaped($0.endpoint)) \(PeerText.escaped($0.keyPath))" }
        let certSource = certFlag != nil ? "--cert" : "SMQ_CERT"
        lines.append(cert.isEmpty ? "cert: (none: give --cert or set SMQ_CERT)" : "cert: \(PeerText.escaped(cert)) (from \(certSource))")
        lines.append("connect-timeout: \(connectTimeout) s")
        lines.append("log-level: \(logLevel)")
        return lines.joined(separator: "\n")
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
