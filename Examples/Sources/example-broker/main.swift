import Dispatch
import Glibc
import Logging
import SecureMQ

// The broker, embedded: secure-broker is a daemon around this. It admits the public keys in
// certs/allowed/ and serves at ENDPOINT (default tcp://127.0.0.1:5555) until SIGINT or SIGTERM.
let endpoint = CommandLine.arguments.count > 1 ? CommandLine.arguments[1] : "tcp://127.0.0.1:5555"
let logger = Logger(label: "example-broker")
let brokerKeys = try Certificate.load(path: "certs/broker.key_secret").keyPair()
let allowlist = try Allowlist(directory: "certs/allowed", logger: logger)

var configuration = BrokerConfiguration()
configuration.endpoints = [endpoint]
let broker = try await Broker.start(keyPair: brokerKeys, allowlist: allowlist, configuration: configuration, logger: logger)
print("broker at \(endpoint)")

// shutdown() drains: new jobs get 503, fragments at workers may finish, then every peer is told.
await withCheckedContinuation { (stopped: CheckedContinuation<Void, Never>) in
    signal(SIGINT, SIG_IGN)
    signal(SIGTERM, SIG_IGN)
    let sources = [SIGINT, SIGTERM].map { DispatchSource.makeSignalSource(signal: $0, queue: .main) }
    for source in sources {
        source.setEventHandler {
            for source in sources { source.cancel() }
            stopped.resume()
        }
        source.resume()
    }
}
await broker.shutdown()
print("broker stopped")
