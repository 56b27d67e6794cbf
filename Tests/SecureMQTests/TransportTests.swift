import Testing
import Glibc
import Logging
internal import CZeroMQ
@testable import SecureMQ

@Suite(.timeLimit(.minutes(1)))
struct TransportTests {
    @Test func allowlistedClientAndServerExchangeMessages() async throws {
        let clientKeys = KeyPair.generate()
        let fixture = try await ServerFixture.make(allowing: [clientKeys.publicKey])
        let connection = try await fixture.connect(clientKeys)

        try await connection.send(Array("ping".utf8))
        let request = try await fixture.server.receive(timeout: .seconds(10))
        #expect(request.body == Array("ping".utf8))
        // Identity is the key ZAP admitted.
        #expect(request.publicKey == clientKeys.publicKey)

        try await fixture.server.send(Array("pong".utf8), to: request.peer)
        #expect(try await connection.receive(timeout: .seconds(10)) == Array("pong".utf8))
        #expect(fixture.logs.contains("peer admitted", where: "key", is: clientKeys.publicKey.fingerprint))
        await connection.close()
        await fixture.server.close()
    }

    @Test func manyMessagesArriveInOrder() async throws {
        let clientKeys = KeyPair.generate()
        let fixture = try await ServerFixture.make(allowing: [clientKeys.publicKey])
        let connection = try await fixture.connect(clientKeys)
        for index in 0..<500 { try await connection.send([UInt8(index & 0xFF), UInt8(index >> 8)]) }
        for index in 0..<500 {
            let message = try await fixture.server.receive(timeout: .seconds(10))
            #expect(message.body == [UInt8(index & 0xFF), UInt8(index >> 8)])
        }
        await connection.close()
        await fixture.server.close()
    }

    @Test func connectionAndServerWorkFromTasksOnTheirOwnExecutors() async throws {
        let clientKeys = KeyPair.generate()
        let fixture = try await ServerFixture.make(allowing: [clientKeys.publicKey])
        let connection = try await fixture.connect(clientKeys)
        // The server echoes whatever arrives, from a task on its own executor.
        let server = fixture.server
        let echo = Task {
            try await withTaskExecutorPreference(server.executor) {
                for _ in 0..<300 {
                    let message = try await server.receive(timeout: .seconds(10))
                    try await server.send(message.body, to: message.peer)
                }
            }
        }
        let outcome = try await withTaskExecutorPreference(connection.executor) { () async throws -> ([UInt8], SecureMQError.Code?, SecureMQError.Code?) in
            for index in 0..<300 { try await connection.send([UInt8(index & 0xFF), UInt8(index >> 8)]) }
            var low: [UInt8] = []
            for _ in 0..<300 { low.append(try await connection.receive(timeout: .seconds(10))[0]) }
            // A deadline and a cancellation reach a receive that waits on the socket thread.
            var timedOut: SecureMQError.Code?
            do { _ = try await connection.receive(timeout: .milliseconds(30)) } catch let error as SecureMQError { timedOut = error.code }
            let waiting = Task { try await connection.receive() }
            waiting.cancel()
            var cancelled: SecureMQError.Code?
            do { _ = try await waiting.value } catch let error as SecureMQError { cancelled = error.code }
            return (low, timedOut, cancelled)
        }
        #expect(outcome.0 == (0..<300).map { UInt8($0 & 0xFF) })
        #expect(outcome.1 == .timedOut)
        #expect(outcome.2 == .cancelled)
        try await echo.value
        await connection.close()
        await fixture.server.close()
    }

    @Test func releasingAContextWithASocketLeftOpenLogsInsteadOfHanging() throws {
        let (logger, logs) = capturingLogger("context")
        var context: SecureContext? = SecureContext(logger: logger, terminationWait: .milliseconds(100))
        let leaked = try ZMQSocket(context: context!.handle, kind: .dealer)
        try leaked.connect("tcp://127.0.0.1:9")
        // zmq_ctx_term waits for the open socket: the deinit returns anyway, and says why.
        context = nil
        #expect(logs.contains("the ZeroMQ context still waits for a socket that was never closed; it is left to terminate in the background"))
        leaked.close(linger: .zero)
    }

    @Test func unknownKeyIsRejectedWithTypedErrorAndLogged() async throws {
        let fixture = try await ServerFixture.make(allowing: [KeyPair.generate().publicKey])
        let stranger = KeyPair.generate()
        let error = await #expect(throws: SecureMQError.self) { _ = try await fixture.connect(stranger) }
        #expect(error?.code == .rejectedByServer)
        #expect(error?.message.contains("allowlist") == true)
        #expect(fixture.logs.contains("peer denied", where: "key", is: stranger.publicKey.fingerprint))
        #expect(fixture.logs.contains("peer denied", where: "address"))
        await fixture.server.close()
    }

    @Test func wrongServerKeyGivesHandshakeErrorInBoundedTime() async throws {
        let clientKeys = KeyPair.generate()
        let fixture = try await ServerFixture.make(allowing: [clientKeys.publicKey])
        var options = ConnectionOptions()
        options.reconnectInterval = .milliseconds(100)
        let error = await #expect(throws: SecureMQError.self) {
            _ = try await SecureConnection.connect(to: fixture.endpoint, serverKey: KeyPair.generate().publicKey,
                                                   keyPair: clientKeys, context: fixture.context, options: options)
        }
        #expect(error?.code == .handshakeFailed)
        await fixture.server.close()
    }

    @Test func nothingListeningGivesUnreachable() async throws {
        let fixture = try await ServerFixture.make(allowing: [])
        // Port 1 (tcpmux) is privileged and unused on loopback here.
        let endpoint = "tcp://127.0.0.1:1"
        await fixture.server.close()
        var options = ConnectionOptions()
        options.connectTimeout = .milliseconds(300)
        let error = await #expect(throws: SecureMQError.self) {
            _ = try await SecureConnection.connect(to: endpoint, serverKey: fixture.serverKeys.publicKey,
                                                   keyPair: KeyPair.generate(), context: fixture.context, options: options)
        }
        #expect(error?.code == .unreachable)
    }

    @Test func malformedZAPRequestGetsA400AndTheHandlerKeepsWorking() async throws {
        let clientKeys = KeyPair.generate()
        let fixture = try await ServerFixture.make(allowing: [clientKeys.publicKey])
        // Talk to the context's ZAP handler directly, as a broken libzmq peer would.
        let request = try ZMQSocket(context: fixture.context.handle, kind: .req)
        defer { request.close(linger: .zero) }
        try request.set(ZMQ_RCVTIMEO, 5000)
        try request.connect(ZAPHandler.endpoint)
        #expect(try request.send(Array("2.0".utf8), more: true))
        #expect(try request.send(Array("id-1".utf8)))
        let reply = try blockingReceive(request)
        #expect(reply.count == 6)
        #expect(reply.first == Array("1.0".utf8))
        #expect(reply.dropFirst(2).first == Array("400".utf8))
        #expect(try fixture.context.zapHandler().statistics.malformed == 1)
        // Still serving handshakes.
        let connection = try await fixture.connect(clientKeys)
        await connection.close()
        await fixture.server.close()
    }

    @Test func receiveTimesOutAndCancels() async throws {
        let clientKeys = KeyPair.generate()
        let fixture = try await ServerFixture.make(allowing: [clientKeys.publicKey])
        let connection = try await fixture.connect(clientKeys)
        let timedOut = await #expect(throws: SecureMQError.self) { _ = try await connection.receive(timeout: .milliseconds(50)) }
        #expect(timedOut?.code == .timedOut)

        let task = Task { try await connection.receive() }
        task.cancel()
        let cancelled = await #expect(throws: SecureMQError.self) { _ = try await task.value }
        #expect(cancelled?.code == .cancelled)

        // The connection still works after both.
        try await connection.send([1])
        #expect(try await fixture.server.receive(timeout: .seconds(10)).body == [1])
        await connection.close()
        await fixture.server.close()
    }

    @Test func oversizedMessageIsRefusedBeforeSending() async throws {
        let clientKeys = KeyPair.generate()
        let fixture = try await ServerFixture.make(allowing: [clientKeys.publicKey])
        var options = ConnectionOptions()
        options.maxMessageSize = 4096
        let connection = try await fixture.connect(clientKeys, options: options)
        let error = await #expect(throws: SecureMQError.self) { try await connection.send([UInt8](repeating: 0, count: 5000)) }
        #expect(error?.code == .messageTooLarge)
        await connection.close()
        await fixture.server.close()
    }

    @Test func closedConnectionFailsOperations() async throws {
        let clientKeys = KeyPair.generate()
        let fixture = try await ServerFixture.make(allowing: [clientKeys.publicKey])
        let connection = try await fixture.connect(clientKeys)
        await connection.close()
        let error = await #expect(throws: SecureMQError.self) { try await connection.send([1]) }
        #expect(error?.code == .closed)
        await fixture.server.close()
    }
}

/// Blocking receive of every part of one message, for sockets a test drives directly.
func blockingReceive(_ socket: ZMQSocket) throws -> [[UInt8]] {
    var parts: [[UInt8]] = []
    repeat {
        let message = ZMQMessage()
        let rc = zmq_msg_recv(message.pointer, socket.handle, 0)
        guard rc >= 0 else { throw SecureMQError.system("zmq_msg_recv", zmq_errno()) }
        parts.append(message.array)
        if !message.hasMore { break }
    } while true
    return parts
}

@Suite(.timeLimit(.minutes(1)))
struct AllowlistReloadTests {
    @Test func addedKeyGetsInAndRemovedKeyIsRefused() async throws {
        let directory = "/tmp/smq-allow-\(UInt64.random(in: 0...UInt64.max))"
        mkdir(directory, 0o755)
        defer { _ = try? removeTree(directory) }
        let context = SecureContext()
        let serverKeys = KeyPair.generate()
        let (logger, logs) = capturingLogger("server")
        let allowlist = try Allowlist(directory: directory, logger: logger)
        let server = try await SecureServer.bind(["tcp://127.0.0.1:*"], keyPair: serverKeys, allowlist: allowlist,
                                                 context: context, allowlistCheckInterval: .milliseconds(50), logger: logger)
        let clientKeys = KeyPair.generate()
        func attempt() async -> SecureMQError? {
            do {
                let connection = try await SecureConnection.connect(to: server.endpoints[0], serverKey: serverKeys.publicKey,
                                                                    keyPair: clientKeys, context: context)
                await connection.close()
                return nil
            } catch {
                return error
            }
        }
        #expect(await attempt()?.code == .rejectedByServer)

        // Added: the server's periodic content check picks it up; poll until a handshake passes.
        try Certificate(publicKey: clientKeys.publicKey).save(directory: directory, name: "client-1")
        var admitted = false
        for _ in 0..<200 where !admitted {
            admitted = await attempt() == nil
        }
        #expect(admitted)
        #expect(logs.contains("peer admitted", where: "key", is: clientKeys.publicKey.fingerprint))

        // Removed: new handshakes are refused again.
        unlink(directory + "/client-1.key")
        var refused = false
        for _ in 0..<200 where !refused {
            refused = await attempt()?.code == .rejectedByServer
        }
        #expect(refused)
        await server.close()
    }
}

func removeTree(_ path: String) throws {
    guard let dir = opendir(path) else { return }
    while let entry = readdir(dir) {
        let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix(while: { $0 != 0 }), as: UTF8.self) }
        if name != "." && name != ".." { unlink(path + "/" + name) }
    }
    closedir(dir)
    rmdir(path)
}

@Suite struct ByteCountTests {
    @Test(arguments: [("262144", 262144), ("256K", 262144), ("256k", 262144), ("1M", 1 << 20), ("1MiB", 1 << 20),
                      ("2G", 2 << 30), ("64B", 64)])
    func parsesSizes(text: String, bytes: Int) {
        #expect(ByteCount.parse(text) == bytes)
    }

    @Test(arguments: ["", "0", "-1", "1T", "K", "12.5M", "99999999999999999G"])
    func refusesTheRest(text: String) {
        #expect(ByteCount.parse(text) == nil)
    }
}
