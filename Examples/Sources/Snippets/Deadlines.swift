import SecureMQ

/// Deadlines, given a connected client and worker (as in example-client and example-worker).
func deadlines(client: Client, worker: Worker) async throws {
    // The job fails with .deadlineExceeded (status 408) 30 s from now; results that came first stay readable.
    let job = try await client.submit(.file("big.bin"), to: "sha256", deadline: .seconds(30))
    do {
        for try await result in job { print(result.index, result.body.count) }
    } catch {
        guard error.code == .deadlineExceeded else { throw error }
        print("gave up:", error.message)   // the broker was told to drop the rest (CANCEL)
    }

    // One request: at most 200 ms.
    let reply = try await client.request(Array("hello".utf8), service: "sha256", timeout: .milliseconds(200))
    print(reply.count)

    // A worker can give up early: item.timeLeft is nil for a job without a deadline.
    try await worker.run { item in
        if let left = item.timeLeft, left < .milliseconds(10) {
            throw WorkRejection(code: 408, reason: "not enough time left")
        }
        return SHA256.hash(item.body).bytes
    }
}
