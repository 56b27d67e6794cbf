import Dispatch
import Glibc
import SecureMQ

// A worker for the "sha256" service: it answers each fragment with the fragment's SHA-256.
// Run: example-worker [ENDPOINT] (default tcp://127.0.0.1:5555), in a directory holding certs/.
let endpoint = CommandLine.arguments.count > 1 ? CommandLine.arguments[1] : "tcp://127.0.0.1:5555"
let brokerKey = try Certificate.load(path: "certs/broker.key").publicKey
let workerKeys = try Certificate.load(path: "certs/worker-1.key_secret").keyPair()

let worker = try await Worker.connect(to: endpoint, brokerKey: brokerKey, keyPair: workerKeys, service: "sha256")

// Shut down on SIGINT or SIGTERM: close() tells the broker (DISCONNECT), which gives whatever
// this worker still holds to other workers, and run returns once running handlers have finished.
signal(SIGINT, SIG_IGN)
signal(SIGTERM, SIG_IGN)
let stopSignals = [SIGINT, SIGTERM].map { DispatchSource.makeSignalSource(signal: $0, queue: .main) }
for source in stopSignals {
    source.setEventHandler { Task { await worker.close() } }
    source.resume()
}

print("serving sha256 at \(endpoint)")
try await worker.run { item in SHA256.hash(item.body).bytes }
print("stopped after \(await worker.processed()) fragments")
