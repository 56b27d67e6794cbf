import Testing
internal import CZeroMQ
import Logging
import InMemoryLogging
@testable import SecureMQ

/// Every malformed-message case of PROTOCOL.md §2, sent from a real allowlisted CURVE socket,
/// while a normal job runs beside it.
@Suite(.timeLimit(.minutes(1)))
struct MalformedMessageTests {
    static let service: ServiceName = "echo"

    /// A valid SUBMIT of `body`, as bytes to break.
    static func submit(_ body: [UInt8], jobID: JobID = .random(), index: UInt32 = 0, count: UInt32 = 1,
                       offset: UInt64 = 0, total: UInt64? = nil) -> [UInt8] {
        let header = FragmentHeader(jobID: jobID, index: index, count: count, offset: offset,
                                    totalLength: total ?? UInt64(body.count), length: UInt32(body.count), digest: SHA256.hash(body))
        return Fragment.encode(command: .submit, tag: 0, service: service, header: header, body: body)
    }

    /// Where the 80-byte header starts in a SUBMIT to `echo`.
    static let headerAt = Fragment.bodyOffset(serviceLength: 4) - FragmentHeader.byteCount

    @Test func unreadableMessagesAreDroppedLoggedAndCounted() async throws {
        let fixture = try await PipelineFixture(peers: [("client-1", "client", 1), ("prober", "client", 1), ("worker-1", "worker", 1)])
        try await fixture.startWorker("worker-1")
        let client = try await fixture.client("client-1") { $0.fragmentSize = 1024 }
        let job = try await client.submit(.bytes(patternBytes(256 << 10)), to: "echo")

        let prober = try await SecureConnection.connect(to: fixture.endpoint, serverKey: fixture.brokerKeys.publicKey,
                                                        keyPair: fixture.keys("prober"), context: fixture.context)
        var badService = Self.submit([1, 2, 3])
        badService[Fragment.serviceOffset + 1] = UInt8(ascii: " ")
        var shortCancel = ControlMessage.cancel(jobID: .random()).encoded()
        shortCancel.removeLast(6)
        let cases: [(String, [UInt8])] = [
            ("wrong signature", Array("XYZ".utf8) + [1, 3]),
            ("wrong version", Array("SMQ".utf8) + [2, 3]),
            ("unknown command", Array("SMQ".utf8) + [1, 0x77]),
            ("shorter than the envelope", Array("SM".utf8)),
            ("too short for its command", shortCancel),
            ("bad service name", badService),
            ("trailing bytes", ControlMessage.ping.encoded() + [0]),
        ]
        for (number, (name, bytes)) in cases.enumerated() {
            try await prober.send(bytes)
            try await waitFor("\(name) counted") { await fixture.broker.statistics().malformed >= number + 1 }
        }
        #expect(fixture.logs.contains("dropped malformed message", where: "key", is: fixture.keys("prober").publicKey.fingerprint))

        // Still served afterwards: a PING gets its PONG.
        try await prober.send(ControlMessage.ping.encoded())
        let pong = try await prober.receive(timeout: .seconds(10))
        #expect(pong == ControlMessage.pong.encoded())

        // The normal job beside it is untouched.
        #expect(same(try await job.collect(), patternBytes(256 << 10)))
        await prober.close()
        await client.close()
        await fixture.stop()
    }

    @Test func multipartMessageIsDropped() async throws {
        let fixture = try await PipelineFixture(peers: [("prober", "client", 1)])
        // A raw CURVE DEALER that sends two frames starting with SMQ.
        let socket = try ZMQSocket(context: fixture.context.handle, kind: .dealer)
        defer { socket.close(linger: .zero) }
        try socket.configureCurveClient(keyPair: fixture.keys("prober"), serverKey: fixture.brokerKeys.publicKey)
        try socket.set(ZMQ_SNDTIMEO, 5000)
        try socket.connect(fixture.endpoint)
        let ping = ControlMessage.ping.encoded()
        #expect(zmq_send(socket.handle, ping, ping.count, ZMQ_SNDMORE) == Int32(ping.count))
        #expect(zmq_send(socket.handle, ping, ping.count, 0) == Int32(ping.count))
        try await waitFor("multipart counted") { await fixture.broker.statistics().malformed >= 1 }
        #expect(fixture.logs.entries.contains { $0.message.description == "dropped malformed message" && "\($0.metadata["reason"] ?? "")".contains("frames") })
        await fixture.stop()
    }

    @Test(arguments: [
        ("index not below count", 400),
        ("LAST flag on the wrong fragment", 400),
        ("length differs from the body", 400),
        ("offset + length past total-length", 400),
        ("header version 2", 400),
        ("reserved bits set", 400),
        ("body above max-fragment", 413),
        ("offset 2^63, total-length 2^64 - 1", 400),
        ("total-length beyond count × max-fragment", 400),
        ("fragment 0 not at offset 0", 400),
    ])
    func badFragmentsGetFailedWithTheirCode(name: String, expected: Int) async throws {
        let fixture = try await PipelineFixture(peers: [("client-1", "client", 1), ("prober", "client", 1), ("worker-1", "worker", 1)]) {
            $0.maxFragmentSize = 4096
        }
        try await fixture.startWorker("worker-1")
        let client = try await fixture.client("client-1") { $0.fragmentSize = 1024; $0.maxFragmentSize = 4096 }
        let job = try await client.submit(.bytes(patternBytes(64 << 10)), to: "echo")

        let prober = try await SecureConnection.connect(to: fixture.endpoint, serverKey: fixture.brokerKeys.publicKey,
                                                        keyPair: fixture.keys("prober"), context: fixture.context)
        let jobID = JobID.random()
        let h = Self.headerAt
        var message: [UInt8]
        var index: UInt32 = 0
        switch name {
        case "index not below count":
            message = Self.submit([1, 2, 3], jobID: jobID, index: 0, count: 1)
            message[h + 23] = 5 // index 5 of 1
            index = 5
        case "LAST flag on the wrong fragment":
            message = Self.submit([1, 2, 3], jobID: jobID, index: 0, count: 2, total: 6)
            message[h + 1] = 1
        case "length differs from the body":
            message = Self.submit([1, 2, 3], jobID: jobID)
            message[h + 47] = 9
        case "offset + length past total-length":
            message = Self.submit([1, 2, 3], jobID: jobID, index: 0, count: 1, offset: 10, total: 3)
        case "header version 2":
            message = Self.submit([1, 2, 3], jobID: jobID)
            message[h] = 2
        case "reserved bits set":
            message = Self.submit([1, 2, 3], jobID: jobID)
            message[h + 3] = 1
        case "offset 2^63, total-length 2^64 - 1":
            // Once enough to crash every worker it reached (PROTOCOL.md C33).
            message = Self.submit([1, 2, 3], jobID: jobID, index: 1, count: 3, offset: 1 << 63, total: UInt64.max)
            index = 1
        case "total-length beyond count × max-fragment":
            message = Self.submit([1, 2, 3], jobID: jobID, index: 0, count: 2, offset: 0, total: 2 * 4096 + 1)
        case "fragment 0 not at offset 0":
            message = Self.submit([1, 2, 3], jobID: jobID, index: 0, count: 2, offset: 1, total: 10)
        default:
            message = Self.submit(patternBytes(4500), jobID: jobID)
        }
        try await prober.send(message)
        let reply = try await prober.receive(timeout: .seconds(10))
        let failed = try reply.withUnsafeBytes { bytes throws -> (JobID, UInt32, UInt16) in
            guard case .failed(let id, let at, let code, _) = try Message.parse(bytes) else {
                throw SecureMQError(.integrity, "expected FAILED")
            }
            return (id, at, code.rawValue)
        }
        #expect(failed.0 == jobID)
        #expect(failed.1 == index)
        #expect(Int(failed.2) == expected)
        #expect(same(try await job.collect(), patternBytes(64 << 10)))
        await prober.close()
        await client.close()
        await fixture.stop()
    }

    @Test func aClientSendingWorkerCommandsIsDisconnected() async throws {
        let fixture = try await PipelineFixture(peers: [("prober", "client", 1)])
        let prober = try await SecureConnection.connect(to: fixture.endpoint, serverKey: fixture.brokerKeys.publicKey,
                                                        keyPair: fixture.keys("prober"), context: fixture.context)
        try await prober.send(ControlMessage.reject(deliveryID: 1, code: .malformed, retryable: false, reason: "x").encoded())
        let reply = try await prober.receive(timeout: .seconds(10))
        let isDisconnect = reply.withUnsafeBytes { bytes in
            if case .disconnect = try? Message.parse(bytes) { return true }
            return false
        }
        #expect(isDisconnect)
        #expect(await fixture.broker.statistics().roleViolations == 1)
        await prober.close()
        await fixture.stop()
    }
}

/// Polls `condition` until it holds, failing after `seconds`: waiting for an event, not sleeping
/// for a guessed time.
func waitFor(_ what: String, seconds: Int = 30, _ condition: () async throws -> Bool) async throws {
    let deadline = ContinuousClock.now + .seconds(seconds)
    while ContinuousClock.now < deadline {
        if try await condition() { return }
        try await Task.sleep(for: .milliseconds(5))
    }
    Issue.record("timed out waiting for: \(what)")
    throw SecureMQError(.timedOut, "timed out waiting for \(what)")
}
