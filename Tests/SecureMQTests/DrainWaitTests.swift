import Testing
@testable import SecureMQ
import SMQKeys
import SMQProtocol

/// C67's wait for a draining broker is bounded: a broker that answers `503` (draining) and never
/// goes away, while it answers every PING, cannot keep a job waiting for ever.
@Suite(.timeLimit(.minutes(1)))
struct DrainWaitTests {
    @Test func aBrokerThatKeepsAnswering503AndStaysEndsTheJobWith503() async throws {
        let clientKeys = KeyPair.generate()
        let broker = try await ServerFixture.make(allowing: [clientKeys.publicKey])
        // The broken broker: PONG to every PING, FAILED 503 to every SUBMIT after a job's first
        // fragment, and it never closes a connection. It runs on the server's own socket thread:
        // on the shared pool a loaded full run delayed its PONGs past the silence limit.
        let serving = Task(executorPreference: broker.server.executor) {
            var refusals = 0
            while !Task.isCancelled {
                guard let message = try? await broker.server.receive(timeout: .seconds(30)) else { return refusals }
                let reply: [UInt8]? = message.body.withUnsafeBytes { bytes in
                    switch try? Message.parse(bytes) {
                    case .ping?: return ControlMessage.pong.encoded()
                    case .submit(let fragment)? where fragment.header.index > 0:
                        return ControlMessage.failed(jobID: fragment.header.jobID, index: fragment.header.index,
                                                     code: .draining, reason: "the broker is draining; submit again later").encoded()
                    default: return nil
                    }
                }
                if let reply {
                    if reply.count > 5 { refusals += 1 }
                    try? await broker.server.send(reply, to: message.peer)
                }
            }
            return refusals
        }
        var options = Client.Options()
        options.fragmentSize = 1000
        // 300 ms × 3: the broker's PONGs keep the link from looking silent (a shorter interval let a
        // loaded full run take it for silent, reconnect for that and end the job as looping,
        // 413), so only the 503 path is exercised.
        options.heartbeatInterval = .milliseconds(300)
        options.liveness = 3
        options.connection.reconnectInterval = .milliseconds(20)
        let client = try await Client.connect(to: broker.endpoint, brokerKey: broker.serverKeys.publicKey, keyPair: clientKeys,
                                              options: options, context: broker.context)
        let job = try await client.submit(.bytes(patternBytes(3000)), to: "echo")
        let failure = await #expect(throws: SecureMQError.self) { _ = try await job.collect() }
        #expect(failure?.status == 503, "\(String(describing: failure))")
        await client.close()
        serving.cancel()
        await broker.server.close()
        // It waited (reconnected and resent) as often as the bound allows, then gave up.
        #expect(await serving.value >= options.maxResubmitsWithoutProgress + 1)
    }
}
