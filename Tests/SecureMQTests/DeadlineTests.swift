import Glibc
import Synchronization
import Testing
@testable import SecureMQ

/// Issue 11 in the library: deadlines on jobs and requests, fast and typed connection failures,
/// options that would trap refused as configuration errors.
@Suite struct DeadlineTests {
    /// A handler that holds its fragment until the test lets go (or 5 s pass): a slow machine.
    final class Gate: Sendable {
        private let open = Atomic(false)
        func release() { open.store(true, ordering: .releasing) }
        func hold() async throws {
            let until = ContinuousClock.now + .seconds(5)
            while !open.load(ordering: .acquiring), ContinuousClock.now < until { try await Task.sleep(for: .milliseconds(10)) }
        }
    }

    @Test(.timeLimit(.minutes(1)))
    func aJobPastItsDeadlineFailsWith408WhileTheWorkerStillHoldsIt() async throws {
        let fixture = try await PipelineFixture(peers: [("worker-1", "worker", 1), ("client-1", "client", 1)])
        let gate = Gate()
        try await fixture.startWorker("worker-1", handler: { item in try await gate.hold(); return item.body })
        let client = try await fixture.client("client-1")
        try await fixture.waitForWorkers(1, using: client)
        let job = try await client.submit(.bytes(patternBytes(3000)), to: "echo", deadline: .milliseconds(300))
        do {
            _ = try await job.collect()
            Issue.record("the job outlived its deadline")
        } catch {
            #expect(error.code == .deadlineExceeded, "\(error)")
            #expect(error.status == 408, "\(error)")
            #expect(error.message.contains("deadline"), "\(error)")
        }
        gate.release()
        await client.close()
        await fixture.stop()
    }

    @Test(.timeLimit(.minutes(1)))
    func aRequestPastItsTimeoutThrowsDeadlineExceededAndTheClientGoesOn() async throws {
        let fixture = try await PipelineFixture(peers: [("worker-1", "worker", 1), ("client-1", "client", 1)])
        let gate = Gate()
        try await fixture.startWorker("worker-1", handler: { item in
            if item.body == Array("slow".utf8) { try await gate.hold() }
            return item.body
        })
        let client = try await fixture.client("client-1")
        try await fixture.waitForWorkers(1, using: client)
        await #expect(throws: SecureMQError.self) { _ = try await client.request(Array("slow".utf8), service: "echo", timeout: .milliseconds(200)) }
        do {
            _ = try await client.request(Array("slow".utf8), service: "echo", timeout: .milliseconds(200))
        } catch {
            #expect(error.code == .deadlineExceeded && error.status == 408, "\(error)")
        }
        gate.release()
        // The same client still works: a request within its timeout gets its reply.
        #expect(try await client.request(Array("fast".utf8), service: "echo", timeout: .seconds(20)) == Array("fast".utf8))
        await client.close()
        await fixture.stop()
    }

    /// The worker's handler sees the time left (DEADLINE before WORK, C45), and nil without one.
    @Test(.timeLimit(.minutes(1)))
    func aHandlerSeesTheTimeLeftOfItsJob() async throws {
        let fixture = try await PipelineFixture(peers: [("worker-1", "worker", 1), ("client-1", "client", 1)])
        let seen = Mutex<[Duration?]>([])
        try await fixture.startWorker("worker-1", handler: { item in
            seen.withLock { $0.append(item.timeLeft) }
            return item.body
        })
        let client = try await fixture.client("client-1")
        try await fixture.waitForWorkers(1, using: client)
        _ = try await client.submit(.bytes([1, 2, 3]), to: "echo", deadline: .seconds(20)).collect()
        _ = try await client.submit(.bytes([4, 5, 6]), to: "echo").collect()
        let times = seen.withLock { $0 }
        try #require(times.count == 2)
        let left = try #require(times[0], "the handler did not see the job's deadline")
        #expect(left > .zero && left <= .seconds(20), "\(left)")
        #expect(times[1] == nil, "a job without a deadline has no time left")
        await client.close()
        await fixture.stop()
    }

    /// C46 and C47 through the library: the broker's limit learned at connect, an oversized job
    /// refused before anything is sent, the services that have a worker.
    @Test(.timeLimit(.minutes(1)))
    func theClientLearnsTheBrokersLimitAndItsServices() async throws {
        let fixture = try await PipelineFixture(peers: [("worker-1", "worker", 1), ("worker-2", "worker", 1), ("client-1", "client", 1)]) {
            $0.maxFragmentSize = 64 << 10
        }
        try await fixture.startWorker("worker-1", service: "echo")
        try await fixture.startWorker("worker-2", service: "upper", configure: { $0.maxFragmentSize = 64 << 10 })
        let client = try await fixture.client("client-1") {
            $0.learnBrokerLimits = true
            $0.maxFragmentSize = 256 << 10
            $0.fragmentSize = 128 << 10
        }
        try await fixture.waitForWorkers(1, service: "upper", using: client)
        #expect(await client.brokerMaxFragmentSize == 64 << 10)
        do {
            _ = try await client.submit(.bytes(patternBytes(200 << 10)), to: "echo")
            Issue.record("a job of 128 KiB fragments went to a broker whose limit is 64 KiB")
        } catch {
            #expect(error.status == 413 && error.message.contains("131072") && error.message.contains("65536"), "\(error)")
        }
        await #expect(throws: SecureMQError.self) { _ = try await client.request(patternBytes(100 << 10), service: "echo") }
        // A payload smaller than the limit goes (its one fragment is small).
        #expect(try await client.submit(.bytes(patternBytes(1000)), to: "echo").collect() == patternBytes(1000))
        #expect(try await client.services() == ["echo", "upper"])
        await client.close()
        await fixture.stop()
    }

    /// The issue's loop: a fragment over the broker's ZMQ_MAXMSGSIZE makes libzmq drop the
    /// connection, the client reconnected and resent it for ever. Without asking the limits
    /// (C47), the client now gives up after maxResubmitsWithoutProgress (C48) and says why.
    @Test(.timeLimit(.minutes(1)))
    func resendingWithoutProgressIsBoundedAndNamesTheCause() async throws {
        let fixture = try await PipelineFixture(peers: [("worker-1", "worker", 1), ("client-1", "client", 1)]) {
            $0.maxFragmentSize = 64 << 10
        }
        try await fixture.startWorker("worker-1", service: "echo", configure: { $0.maxFragmentSize = 64 << 10 })
        let client = try await fixture.client("client-1") {
            $0.maxFragmentSize = 256 << 10
            $0.fragmentSize = 128 << 10
        }
        try await fixture.waitForWorkers(1, using: client)
        do {
            _ = try await client.submit(.bytes(patternBytes(256 << 10)), to: "echo").collect()
            Issue.record("a job of fragments over the broker's limit completed")
        } catch {
            #expect(error.code == .jobFailed && error.status == 413, "\(error)")
            #expect(error.message.contains("dropped the connection") && error.message.contains("131072"), "\(error)")
        }
        await client.close()
        await fixture.stop()
    }

    @Test(arguments: [Duration.zero, .milliseconds(-5), .seconds(100 * 86_400)])
    func aDeadlineOutOfRangeIsAConfigurationError(deadline: Duration) async throws {
        let fixture = try await PipelineFixture(peers: [("client-1", "client", 1)])
        let client = try await fixture.client("client-1")
        await #expect(throws: SecureMQError.self) { _ = try await client.submit(.bytes([1]), to: "echo", deadline: deadline) }
        await #expect(throws: SecureMQError.self) { _ = try await client.request([1], service: "echo", timeout: deadline) }
        await client.close()
        await fixture.stop()
    }

    /// Nothing listens: `.unreachable` saying so, long before the 60 s connect timeout.
    @Test(.timeLimit(.minutes(1)))
    func aRefusedConnectionFailsAsUnreachableWithoutWaitingTheTimeout() async throws {
        let port = try Self.closedPort()
        var options = Client.Options()
        options.connection.connectTimeout = .seconds(60)
        do {
            _ = try await Client.connect(to: "tcp://127.0.0.1:\(port)", brokerKey: KeyPair.generate().publicKey,
                                         keyPair: KeyPair.generate(), options: options, context: SecureContext())
            Issue.record("connected to a closed port")
        } catch {
            #expect(error.code == .unreachable, "\(error)")
            #expect(error.message.contains("nothing is listening"), "\(error)")
        }
    }

    @Test(arguments: ["127.0.0.1:5555", "tcp//127.0.0.1:5555", "tcp://127.0.0.1", "tcp://:5555", "tcp://127.0.0.1:0", "http://x:1"])
    func aMalformedEndpointIsAConfigurationErrorThatSaysTheForm(endpoint: String) async throws {
        do {
            _ = try await Client.connect(to: endpoint, brokerKey: KeyPair.generate().publicKey, keyPair: KeyPair.generate(), context: SecureContext())
            Issue.record("connected to \(endpoint)")
        } catch {
            #expect(error.code == .invalidConfiguration, "\(error)")
            #expect(error.message.contains("use tcp://HOST:PORT"), "\(error)")
        }
    }

    /// Each of these reached a precondition (ProtocolLimits, the gatherer) before.
    @Test(arguments: [(5 << 30, 1 << 20), (1 << 20, 5 << 30), (0, 1 << 20), (1 << 20, 0)])
    func sizesBeyondTheProtocolAreConfigurationErrors(maxFragment: Int, fragment: Int) async throws {
        var options = Client.Options()
        options.maxFragmentSize = maxFragment
        options.fragmentSize = fragment
        await #expect(throws: SecureMQError.self) {
            _ = try await Client.connect(to: "tcp://127.0.0.1:1", brokerKey: KeyPair.generate().publicKey, keyPair: KeyPair.generate(),
                                         options: options, context: SecureContext())
        }
        var workerOptions = Worker.Options()
        workerOptions.maxFragmentSize = maxFragment
        if maxFragment > Int(UInt32.max) || maxFragment < 1 {
            await #expect(throws: SecureMQError.self) {
                _ = try await Worker.connect(to: "tcp://127.0.0.1:1", brokerKey: KeyPair.generate().publicKey, keyPair: KeyPair.generate(),
                                             service: "echo", options: workerOptions, context: SecureContext())
            }
        }
    }

    /// A port nothing listens on: bound and closed again (the kernel refuses connections to it).
    static func closedPort() throws -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) == 0 && getsockname(fd, $0, &length) == 0 }
        }
        guard bound else { throw SecureMQError(.system, "cannot bind a port on 127.0.0.1") }
        return Int(UInt16(bigEndian: address.sin_port))
    }
}
