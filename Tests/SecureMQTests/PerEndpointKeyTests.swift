import Testing
@testable import SecureMQ

/// One broker serving two endpoints with two key pairs (key rotation, issue 12): each endpoint
/// completes handshakes with its own key only, and both reach the same workers.
@Suite struct PerEndpointKeyTests {
    @Test func eachEndpointServesItsOwnKey() async throws {
        let old = KeyPair.generate()
        let new = KeyPair.generate()
        let fixture = try await PipelineFixture(peers: [("client-old", "client", 1), ("client-new", "client", 1), ("worker", "worker", 1)]) {
            $0.endpoints = ["tcp://127.0.0.1:*", "tcp://127.0.0.1:*"]
            $0.endpointKeyPairs = [old, new]
        }
        let broker = fixture.broker
        #expect(broker.endpointKeys == [old.publicKey, new.publicKey])
        let (oldEndpoint, newEndpoint) = (broker.endpoints[0], broker.endpoints[1])
        #expect(oldEndpoint != newEndpoint)

        // The worker has moved to the new key already; clients on either key reach it.
        let worker = try await Worker.connect(to: newEndpoint, brokerKey: new.publicKey, keyPair: fixture.keys("worker"),
                                              service: "echo", context: fixture.context)
        let serving = Task { try await worker.run { $0.body } }
        let onOld = try await Client.connect(to: oldEndpoint, brokerKey: old.publicKey, keyPair: fixture.keys("client-old"),
                                             context: fixture.context)
        let onNew = try await Client.connect(to: newEndpoint, brokerKey: new.publicKey, keyPair: fixture.keys("client-new"),
                                             context: fixture.context)
        try await fixture.waitForWorkers(1, using: onOld)
        #expect(try await onOld.request(Array("via old".utf8), service: "echo", timeout: .seconds(20)) == Array("via old".utf8))
        #expect(try await onNew.request(Array("via new".utf8), service: "echo", timeout: .seconds(20)) == Array("via new".utf8))

        // A client that expects the other key on an endpoint fails its handshake, whichever way round.
        var options = Client.Options()
        options.connection.reconnectInterval = .milliseconds(100)
        for (endpoint, key) in [(oldEndpoint, new.publicKey), (newEndpoint, old.publicKey), (oldEndpoint, fixture.brokerKeys.publicKey)] {
            let error = await #expect(throws: SecureMQError.self) {
                _ = try await Client.connect(to: endpoint, brokerKey: key, keyPair: fixture.keys("client-new"),
                                             options: options, context: fixture.context)
            }
            #expect(error?.code == .handshakeFailed)
        }

        await onOld.close()
        await onNew.close()
        await worker.close()
        _ = try? await serving.value
        await fixture.stop()
    }

    @Test func keyPairsMustMatchTheEndpoints() async throws {
        var configuration = BrokerConfiguration()
        configuration.endpoints = ["tcp://127.0.0.1:*", "tcp://127.0.0.1:*"]
        configuration.endpointKeyPairs = [KeyPair.generate()]
        let error = #expect(throws: SecureMQError.self) { try configuration.validate() }
        #expect(error?.code == .invalidConfiguration)
        #expect(error?.message.contains("one key pair per endpoint") == true)
        configuration.endpointKeyPairs = []
        #expect(throws: Never.self) { try configuration.validate() }
    }

    @Test func ioThreadsAreSetOnTheContextAndRangeChecked() throws {
        #expect(try SecureContext(ioThreads: 2).ioThreads == 2)
        #expect(SecureContext().ioThreads == 1)
        for bad in [0, 65, -1] {
            let error = #expect(throws: SecureMQError.self) { _ = try SecureContext(ioThreads: bad) }
            #expect(error?.code == .invalidConfiguration)
        }
    }
}
