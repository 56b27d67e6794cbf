import Glibc
import SecureMQ

// Submits a file to the "sha256" service and prints each fragment's digest, in order; then sends
// eight small requests at once. Run: example-client FILE [ENDPOINT] (default tcp://127.0.0.1:5555),
// in a directory holding certs/ (see "Quick start: keygen").
guard CommandLine.arguments.count > 1 else {
    print("usage: example-client FILE [ENDPOINT]")
    exit(2)
}
let path = CommandLine.arguments[1]
let endpoint = CommandLine.arguments.count > 2 ? CommandLine.arguments[2] : "tcp://127.0.0.1:5555"
let brokerKey = try Certificate.load(path: "certs/broker.key").publicKey
let clientKeys = try Certificate.load(path: "certs/client-1.key_secret").keyPair()

let client = try await Client.connect(to: endpoint, brokerKey: brokerKey, keyPair: clientKeys)
do {
    // One job: the file, split into 256 KiB fragments, results in index order. It fails with
    // .deadlineExceeded (status 408) if it takes more than a minute.
    let job = try await client.submit(.file(path), to: "sha256", deadline: .seconds(60))
    for try await result in job {
        print(result.index, Digest(bytes: result.body)?.description ?? "not a digest")
    }
    print("job digest:", await job.summary().resultDigest)

    // Many small requests at once: run them on the client's own socket thread, so each one
    // reaches the socket and comes back with no thread hand-off (keep such code short).
    let requests = (1...8).map { Array("request \($0)".utf8) }
    let replies = try await withTaskExecutorPreference(client.executor) {
        try await withThrowingTaskGroup(of: [UInt8].self) { group in
            for request in requests {
                group.addTask { try await client.request(request, service: "sha256", timeout: .seconds(10)) }
            }
            var replies: [[UInt8]] = []
            for try await reply in group { replies.append(reply) }
            return replies
        }
    }
    print("\(replies.count) replies")
} catch {
    // Every failure is a SecureMQError: a code to switch on, a message a person can act on.
    print("failed:", error)
    await client.close()
    exit(1)
}
// Close when done: jobs still open would fail with .closed.
await client.close()
