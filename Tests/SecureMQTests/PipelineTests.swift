import Testing
import Glibc
@testable import SecureMQ

@Suite(.timeLimit(.minutes(2)))
struct PipelineTests {
    @Test func payloadOf64MiBComesBackByteExactAndInOrderThroughThreeWorkers() async throws {
        let fixture = try await PipelineFixture(peers: [
            ("client-1", "client", 1), ("worker-1", "worker", 1), ("worker-2", "worker", 2), ("worker-3", "worker", 4),
        ])
        for name in ["worker-1", "worker-2", "worker-3"] { try await fixture.startWorker(name) }
        let client = try await fixture.client("client-1")
        let payload = patternBytes(64 << 20)
        let job = try await client.submit(.bytes(payload), to: "echo")
        #expect(job.fragmentCount == 256)
        var gathered: [UInt8] = []
        gathered.reserveCapacity(payload.count)
        var expectedIndex = 0
        for try await result in job {
            #expect(result.index == expectedIndex)
            expectedIndex += 1
            gathered.append(contentsOf: result.body)
        }
        #expect(same(gathered, payload))
        let summary = await job.summary()
        #expect(summary.payloadDigest == summary.resultDigest) // echo: results are the payload
        #expect(summary.perWorker.values.reduce(0, +) == 256)
        await client.close()
        await fixture.stop()
    }

    @Test func fileIsReadAsAStreamAndEmptyPayloadIsOneFragment() async throws {
        let fixture = try await PipelineFixture(peers: [("client-1", "client", 1), ("worker-1", "worker", 1)])
        try await fixture.startWorker("worker-1", service: "upper") { item in
            item.body.map { $0 >= 0x61 && $0 <= 0x7A ? $0 - 0x20 : $0 }
        }
        let client = try await fixture.client("client-1") { $0.fragmentSize = 1000 }
        let path = "/tmp/smq-test-\(UInt64.random(in: 0...UInt64.max)).txt"
        let text = String(repeating: "hello, secure world. ", count: 500)
        FileHandleless.write(path, Array(text.utf8))
        defer { FileHandleless.remove(path) }
        let job = try await client.submit(.file(path), to: "upper")
        #expect(try await job.collect() == Array(text.uppercased().utf8))

        let empty = try await client.submit(.bytes([]), to: "upper")
        #expect(empty.fragmentCount == 1)
        #expect(try await empty.collect() == [])
        await client.close()
        await fixture.stop()
    }

    @Test func weightedSharesFollowWeightsAndStayWithinLagOfNginx() async throws {
        let weights = [1, 2, 4]
        let fixture = try await PipelineFixture(peers: [
            ("client-1", "client", 1), ("w1", "worker", weights[0]), ("w2", "worker", weights[1]), ("w3", "worker", weights[2]),
        ]) { $0.baseWindow = 1000 }
        // Every worker holds far more credit than the client's window: the scheduler alone decides.
        for name in ["w1", "w2", "w3"] { try await fixture.startWorker(name, credit: 1000) }
        let client = try await fixture.client("client-1") { $0.fragmentSize = 16; $0.window = 64 }
        try await fixture.waitForWorkers(3, using: client)
        let count = 7000
        let job = try await client.submit(.bytes(patternBytes(count * 16)), to: "echo")
        let tags = [fixture.keys("w1"), fixture.keys("w2"), fixture.keys("w3")].map(\.publicKey.tag)
        var sequence: [Int] = []
        for try await result in job { sequence.append(try #require(tags.firstIndex(of: result.workerTag))) }
        #expect(sequence.count == count)

        let total = weights.reduce(0, +)
        for worker in 0..<3 {
            let share = Double(sequence.filter { $0 == worker }.count) / Double(count)
            let expected = Double(weights[worker]) / Double(total)
            #expect(abs(share - expected) <= 0.03, "worker \(worker): share \(share), expected \(expected)")
        }
        // Fragments are dispatched in index order (one job, one client), so result i's worker is
        // the scheduler's i-th pick. Compare cumulative counts with nginx's smooth WRR.
        let maxLag = maxCumulativeLag(sequence, against: smoothWeightedRoundRobin(weights: weights, picks: count), workers: 3)
        #expect(maxLag <= 1.5, "lag \(maxLag) against nginx's smooth weighted round-robin")
        await client.close()
        await fixture.stop()
    }

    @Test func roundRobinGivesEqualShares() async throws {
        let fixture = try await PipelineFixture(peers: [
            ("client-1", "client", 1), ("w1", "worker", 1), ("w2", "worker", 2), ("w3", "worker", 4),
        ]) { $0.strategy = .roundRobin; $0.baseWindow = 1000 }
        for name in ["w1", "w2", "w3"] { try await fixture.startWorker(name, credit: 1000) }
        let client = try await fixture.client("client-1") { $0.fragmentSize = 16; $0.window = 64 }
        try await fixture.waitForWorkers(3, using: client)
        let job = try await client.submit(.bytes(patternBytes(3000 * 16)), to: "echo")
        _ = try await job.collect()
        let summary = await job.summary()
        for worker in ["w1", "w2", "w3"] {
            let done = summary.perWorker[fixture.keys(worker).publicKey.tag] ?? 0
            #expect(abs(done - 1000) <= 30, "\(worker) did \(done) of 3000")
        }
        await client.close()
        await fixture.stop()
    }

    @Test func selfDeclaredHandshakeMetadataChangesNothing() async throws {
        let fixture = try await PipelineFixture(peers: [
            ("client-1", "client", 1), ("liar", "worker", 1), ("honest", "worker", 4),
        ]) { $0.baseWindow = 1000 }
        // The liar claims weight 1000 and role "both" in its handshake; only the allowlist counts.
        try await fixture.startWorker("liar", credit: 1000, configure: { options in
            options.connection.handshakeProperties = [("X-weight", "1000"), ("X-role", "both"), ("X-name", "honest")]
        })
        try await fixture.startWorker("honest", credit: 1000)
        let client = try await fixture.client("client-1") { $0.fragmentSize = 16; $0.window = 64 }
        try await fixture.waitForWorkers(2, using: client)
        let job = try await client.submit(.bytes(patternBytes(2000 * 16)), to: "echo")
        _ = try await job.collect()
        let summary = await job.summary()
        let liar = summary.perWorker[fixture.keys("liar").publicKey.tag] ?? 0
        #expect(abs(Double(liar) / 2000 - 0.2) <= 0.03, "the liar did \(liar) of 2000; weight 1 of 5 is 400")
        #expect(fixture.logs.contains("worker ready", where: "weight", is: "1"))
        await client.close()
        await fixture.stop()
    }

    @Test func clientKeyCannotServeAndWorkerKeyCannotSubmit() async throws {
        let fixture = try await PipelineFixture(peers: [("client-1", "client", 1), ("worker-1", "worker", 1), ("nobody", nil, 1)])
        // A client key sending READY is sent away.
        let impostor = try await Worker.connect(to: fixture.endpoint, brokerKey: fixture.brokerKeys.publicKey,
                                                keyPair: fixture.keys("client-1"), service: "echo", context: fixture.context)
        let served = await #expect(throws: SecureMQError.self) { try await impostor.run { $0.body } }
        #expect(served?.code == .disconnected)
        #expect(fixture.logs.contains("role violation", where: "key", is: fixture.keys("client-1").publicKey.fingerprint))

        // A key without a role gets the default role, client: it cannot serve either.
        let roleless = try await Worker.connect(to: fixture.endpoint, brokerKey: fixture.brokerKeys.publicKey,
                                                keyPair: fixture.keys("nobody"), service: "echo", context: fixture.context)
        let rolelessServed = await #expect(throws: SecureMQError.self) { try await roleless.run { $0.body } }
        #expect(rolelessServed?.code == .disconnected)

        // A worker key submitting is sent away too, and its job fails with the reason.
        let wrongClient = try await Client.connect(to: fixture.endpoint, brokerKey: fixture.brokerKeys.publicKey,
                                                   keyPair: fixture.keys("worker-1"), context: fixture.context)
        let job = try await wrongClient.submit(.bytes([1, 2, 3]), to: "echo")
        let submitted = await #expect(throws: SecureMQError.self) { _ = try await job.collect() }
        #expect(submitted?.code == .disconnected)
        #expect(submitted?.message.contains("may not send") == true)
        await fixture.stop()
    }

    @Test func floodingASmallByteBudgetGetsBusyAndLosesNothing() async throws {
        let fixture = try await PipelineFixture(peers: [("client-1", "client", 1), ("worker-1", "worker", 1)]) {
            $0.byteBudget = 256 << 10
            $0.maxFragmentSize = 64 << 10
            $0.busyRetryAfter = .milliseconds(5)
        }
        try await fixture.startWorker("worker-1", credit: 2) { item in
            try await Task.sleep(for: .milliseconds(1))
            return item.body
        }
        let client = try await fixture.client("client-1") { $0.fragmentSize = 64 << 10; $0.maxFragmentSize = 64 << 10; $0.window = 32 }
        let payload = patternBytes(4 << 20)
        let job = try await client.submit(.bytes(payload), to: "echo")
        #expect(same(try await job.collect(), payload))
        let summary = await job.summary()
        #expect(summary.busyResends > 0)
        let statistics = await fixture.broker.statistics()
        #expect(statistics.busy > 0)
        #expect(statistics.peakBytesHeld <= 256 << 10)
        await client.close()
        await fixture.stop()
    }

    @Test func serviceWithoutWorkersFailsWith404AfterTheServiceTimeout() async throws {
        let fixture = try await PipelineFixture(peers: [("client-1", "client", 1)]) { $0.serviceTimeout = .milliseconds(300) }
        let client = try await fixture.client("client-1")
        let job = try await client.submit(.bytes([1, 2, 3]), to: "nobody-serves-this")
        let error = await #expect(throws: SecureMQError.self) { _ = try await job.collect() }
        #expect(error?.code == .jobFailed)
        #expect(error?.status == 404)
        await client.close()
        await fixture.stop()
    }

    @Test func workerRejectionReachesTheClientWithItsCode() async throws {
        let fixture = try await PipelineFixture(peers: [("client-1", "client", 1), ("worker-1", "worker", 1)])
        try await fixture.startWorker("worker-1") { item in
            if item.index == 3 { throw WorkRejection(code: 422, reason: "fragment 3 is not valid input") }
            return item.body
        }
        let client = try await fixture.client("client-1") { $0.fragmentSize = 10 }
        let job = try await client.submit(.bytes(patternBytes(100)), to: "echo")
        let error = await #expect(throws: SecureMQError.self) { _ = try await job.collect() }
        #expect(error?.status == 422)
        #expect(error?.fragmentIndex == 3)
        #expect(error?.message.contains("not valid input") == true)
        await client.close()
        await fixture.stop()
    }

    @Test func requestsGetRepliesAndFailuresWithTheirStatus() async throws {
        let fixture = try await PipelineFixture(peers: [("client-1", "client", 1), ("worker-1", "worker", 1)]) {
            $0.serviceTimeout = .milliseconds(300)
        }
        try await fixture.startWorker("worker-1", service: "upper") { item in
            if item.body == [9] { throw WorkRejection(code: 422, reason: "nine is not a letter") }
            return item.body.map { $0 >= 0x61 && $0 <= 0x7A ? $0 - 0x20 : $0 }
        }
        let client = try await fixture.client("client-1")
        // Many at once, each its own one-fragment job.
        let replies = try await withThrowingTaskGroup(of: (Int, [UInt8]).self) { group in
            for index in 0..<200 {
                group.addTask { (index, try await client.request(Array("req-\(index)".utf8), service: "upper")) }
            }
            var all: [Int: [UInt8]] = [:]
            for try await (index, reply) in group { all[index] = reply }
            return all
        }
        for index in 0..<200 { #expect(replies[index] == Array("REQ-\(index)".utf8)) }
        let rejected = await #expect(throws: SecureMQError.self) { _ = try await client.request([9], service: "upper") }
        #expect(rejected?.status == 422)
        #expect(rejected?.message.contains("nine is not a letter") == true)
        let unserved = await #expect(throws: SecureMQError.self) { _ = try await client.request([1], service: "nobody") }
        #expect(unserved?.status == 404)
        await client.close()
        await fixture.stop()
    }

    @Test func aFullSendQueueDelaysRequestsButLosesNone() async throws {
        let fixture = try await PipelineFixture(peers: [("client-1", "client", 1), ("worker-1", "worker", 1)]) {
            $0.maxJobsPerClient = 1000
        }
        try await fixture.startWorker("worker-1", credit: 64)
        // A high-water mark of 1: a burst of requests finds libzmq's send queue full.
        let client = try await fixture.client("client-1") { $0.connection.highWaterMark = 1 }
        try await fixture.waitForWorkers(1, using: client)
        let replies = try await withThrowingTaskGroup(of: Bool.self) { group in
            for index in 0..<500 {
                group.addTask { try await client.request(Array("r\(index)".utf8), service: "echo") == Array("r\(index)".utf8) }
            }
            var correct = 0
            for try await ok in group where ok { correct += 1 }
            return correct
        }
        #expect(replies == 500)
        await client.close()
        await fixture.stop()
    }

    @Test func tasksOnTheClientsExecutorRunOnOneThreadAndOutliveClose() async throws {
        let fixture = try await PipelineFixture(peers: [("client-1", "client", 1), ("worker-1", "worker", 1)]) {
            $0.maxJobsPerClient = 1000
            $0.serviceTimeout = .seconds(60)
        }
        try await fixture.startWorker("worker-1", credit: 64)
        let client = try await fixture.client("client-1") { $0.fragmentSize = 1000 }
        try await fixture.waitForWorkers(1, using: client)
        let payload = patternBytes(50_000)
        let (correct, threads, gathered) = try await withTaskExecutorPreference(client.executor) {
            try await withThrowingTaskGroup(of: (Bool, UInt).self) { group in
                for index in 0..<300 {
                    group.addTask {
                        let reply = try await client.request(Array("r\(index)".utf8), service: "echo")
                        return (reply == Array("r\(index)".utf8), pthread_self())
                    }
                }
                var correct = 0
                var threads: Set<UInt> = []
                for try await (ok, thread) in group {
                    if ok { correct += 1 }
                    threads.insert(thread)
                }
                // A job iterated from the same thread: results in order, byte-exact.
                let gathered = try await client.submit(.bytes(payload), to: "echo").collect()
                threads.insert(pthread_self())
                return (correct, threads, gathered)
            }
        }
        #expect(correct == 300)
        #expect(gathered == payload)
        // Every continuation resumed on the client's socket thread, none on the global pool.
        #expect(threads.count == 1)
        #expect(!threads.contains(pthread_self()))

        // A task on the executor that waits when the client closes gets `.closed`, and goes on
        // running (on the global executor once the thread has gone).
        let submittedBefore = await fixture.broker.statistics().submitted
        let waiting = Task {
            await withTaskExecutorPreference(client.executor) { () async -> SecureMQError? in
                do throws(SecureMQError) {
                    _ = try await client.request([1], service: "nobody")
                    return nil
                } catch {
                    await Task.yield()
                    return error
                }
            }
        }
        try await waitFor("the request at the broker") { await fixture.broker.statistics().submitted > submittedBefore }
        await client.close()
        let failure = await waiting.value
        #expect(failure?.code == .closed)
        await fixture.stop()
    }

    @Test func inlineHandlerServesAndRejects() async throws {
        let fixture = try await PipelineFixture(peers: [("client-1", "client", 1), ("worker-1", "worker", 1)])
        let worker = try await Worker.connect(to: fixture.endpoint, brokerKey: fixture.brokerKeys.publicKey,
                                              keyPair: fixture.keys("worker-1"), service: "sha256", context: fixture.context)
        let serving = Task {
            try await worker.serve { item in
                if item.body.first == 0xFF { throw WorkRejection(code: 415, reason: "no 0xFF here") }
                return SHA256.hash(item.body).bytes
            }
        }
        let client = try await fixture.client("client-1") { $0.fragmentSize = 1000 }
        let payload = patternBytes(100_000).map { $0 == 0xFF ? 0 : $0 }
        let job = try await client.submit(.bytes(payload), to: "sha256")
        var index = 0
        for try await result in job {
            let chunk = Array(payload[index * 1000..<min(payload.count, index * 1000 + 1000)])
            #expect(result.body == SHA256.hash(chunk).bytes)
            index += 1
        }
        #expect(index == 100)
        let refused = await #expect(throws: SecureMQError.self) { _ = try await client.request([0xFF], service: "sha256") }
        #expect(refused?.status == 415)
        await worker.close()
        try await serving.value  // a worker that failed while serving fails the test
        await client.close()
        await fixture.stop()
    }

    @Test func inPlaceHandlerReadsFragmentsWithoutACopy() async throws {
        let fixture = try await PipelineFixture(peers: [("client-1", "client", 1), ("worker-1", "worker", 1)])
        let worker = try await Worker.connect(to: fixture.endpoint, brokerKey: fixture.brokerKeys.publicKey,
                                              keyPair: fixture.keys("worker-1"), service: "count", context: fixture.context)
        let serving = Task {
            try await worker.serveInPlace { header, body in
                // The index and the number of zero bytes: a small result from a big fragment.
                Array("\(header.index):\(body.count { $0 == 0 })".utf8)
            }
        }
        let client = try await fixture.client("client-1") { $0.fragmentSize = 64 << 10 }
        let payload = patternBytes(1 << 20)
        var index = 0
        for try await result in try await client.submit(.bytes(payload), to: "count") {
            let chunk = payload[index * (64 << 10)..<(index + 1) * (64 << 10)]
            #expect(result.body == Array("\(index):\(chunk.count { $0 == 0 })".utf8))
            index += 1
        }
        #expect(index == 16)
        await worker.close()
        try await serving.value  // a worker that failed while serving fails the test
        await client.close()
        await fixture.stop()
    }

    @Test func mmiServiceAnswersWhetherAServiceHasWorkers() async throws {
        let fixture = try await PipelineFixture(peers: [("client-1", "client", 1), ("worker-1", "worker", 1)])
        try await fixture.startWorker("worker-1")
        let client = try await fixture.client("client-1")
        try await fixture.waitForWorkers(1, using: client)
        #expect(try await client.request(Array("echo".utf8), service: "mmi.service") == Array("200".utf8))
        #expect(try await client.request(Array("other".utf8), service: "mmi.service") == Array("404".utf8))
        #expect(try await client.request([], service: "mmi.unknown") == Array("501".utf8))
        await client.close()
        await fixture.stop()
    }

    @Test func cancelEndsTheJobWith410() async throws {
        let fixture = try await PipelineFixture(peers: [("client-1", "client", 1), ("worker-1", "worker", 1)])
        try await fixture.startWorker("worker-1") { item in
            try await Task.sleep(for: .milliseconds(5))
            return item.body
        }
        let client = try await fixture.client("client-1") { $0.fragmentSize = 16 }
        let job = try await client.submit(.bytes(patternBytes(16 * 1000)), to: "echo")
        var iterator = job.makeAsyncIterator()
        _ = try await iterator.next()
        await job.cancel()
        let error = await #expect(throws: SecureMQError.self) { while try await iterator.next() != nil {} }
        #expect(error?.status == 410)
        // The broker let go of the job: a new one runs.
        #expect(try await client.request([7], service: "echo") == [7])
        await client.close()
        await fixture.stop()
    }
}

/// nginx's smooth weighted round-robin: the oracle for the stride scheduler's picks.
func smoothWeightedRoundRobin(weights: [Int], picks: Int) -> [Int] {
    var current = [Int](repeating: 0, count: weights.count)
    let total = weights.reduce(0, +)
    var sequence: [Int] = []
    for _ in 0..<picks {
        for index in weights.indices { current[index] += weights[index] }
        let best = current.indices.max { current[$0] < current[$1] || (current[$0] == current[$1] && $0 > $1) }!
        current[best] -= total
        sequence.append(best)
    }
    return sequence
}

/// The largest |ours_i(n) − theirs_i(n)| over every prefix n and worker i.
func maxCumulativeLag(_ ours: [Int], against theirs: [Int], workers: Int) -> Double {
    var a = [Int](repeating: 0, count: workers), b = a
    var worst = 0
    for (x, y) in zip(ours, theirs) {
        a[x] += 1
        b[y] += 1
        for index in 0..<workers { worst = max(worst, abs(a[index] - b[index])) }
    }
    return Double(worst)
}

/// Small file helpers without Foundation.
enum FileHandleless {
    static func write(_ path: String, _ bytes: [UInt8]) {
        let file = fopen(path, "wb")!
        _ = bytes.withUnsafeBytes { fwrite($0.baseAddress, 1, $0.count, file) }
        fclose(file)
    }

    static func remove(_ path: String) { unlink(path) }
}
