import Testing
import Logging
@testable import SecureMQ

/// A worker facing a broker that is buggy or hostile: a raw ``SecureServer`` plays the broker and
/// sends what no SecureMQ broker would. The worker must answer with a REJECT and stay up.
@Suite(.timeLimit(.minutes(1)))
struct HostileBrokerTests {
    /// Receives until a message parses to what `match` accepts (HEARTBEATs and the like are skipped).
    static func receive<T>(_ server: SecureServer, _ what: String, _ match: (ControlMessage) -> T?) async throws -> (T, PeerID) {
        for _ in 0..<50 {
            let message = try await server.receive(timeout: .seconds(10))
            let control = message.body.withUnsafeBytes { (try? Message.parse($0)).flatMap(ControlMessage.init) }
            if let control, let value = match(control) { return (value, message.peer) }
        }
        throw SecureMQError(.timedOut, "no \(what) from the worker")
    }

    static func work(delivery: UInt64, body: [UInt8], index: UInt32, count: UInt32, offset: UInt64, total: UInt64) -> [UInt8] {
        let header = FragmentHeader(jobID: JobID(high: 1, low: 2), index: index, count: count, offset: offset,
                                    totalLength: total, length: UInt32(body.count), digest: SHA256.hash(body))
        return Fragment.encode(command: .work, tag: delivery, service: "echo", header: header, body: body)
    }

    @Test("a WORK with offset 2^63 and total-length 2^64 − 1 is rejected with 400, and the worker keeps serving")
    func absurdWorkHeaderIsRejectedNotATrap() async throws {
        let workerKeys = KeyPair.generate()
        let fixture = try await ServerFixture.make(allowing: [workerKeys.publicKey])
        let worker = try await Worker.connect(to: fixture.endpoint, brokerKey: fixture.serverKeys.publicKey, keyPair: workerKeys,
                                              service: "echo", context: fixture.context)
        let serving = Task { try await worker.serve { item in item.body } }
        let (_, peer) = try await Self.receive(fixture.server, "READY") { message -> Bool? in
            if case .ready = message { return true } else { return nil }
        }
        let body: [UInt8] = Array("absurd".utf8)
        // Built by hand: the codec's own checks (C33) would refuse to describe it otherwise.
        try await fixture.server.send(Self.work(delivery: 41, body: body, index: 1, count: 3, offset: 1 << 63, total: UInt64.max), to: peer)
        let (rejected, _) = try await Self.receive(fixture.server, "REJECT") { message -> (UInt64, UInt16, Bool)? in
            if case .reject(let delivery, let code, let retryable, _) = message { return (delivery, code.rawValue, retryable) }
            return nil
        }
        #expect(rejected.0 == 41 && rejected.1 == 400 && !rejected.2)

        // Still alive: a valid WORK comes back as a DONE with the same body.
        try await fixture.server.send(Self.work(delivery: 42, body: body, index: 0, count: 1, offset: 0, total: UInt64(body.count)), to: peer)
        var done: (UInt64, [UInt8])?
        for _ in 0..<50 where done == nil {
            let message = try await fixture.server.receive(timeout: .seconds(10))
            done = message.body.withUnsafeBytes { bytes -> (UInt64, [UInt8])? in
                guard case .done(let fragment)? = try? Message.parse(bytes) else { return nil }
                return (fragment.tag, Array(fragment.body))
            }
        }
        #expect(done?.0 == 42 && done?.1 == body)
        await worker.close()
        _ = try? await serving.value
        await fixture.server.close()
    }
}
