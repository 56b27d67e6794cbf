import Logging
import InMemoryLogging
@testable import SecureMQ

/// A logger whose entries a test can read.
func capturingLogger(_ label: String = "test") -> (Logger, InMemoryLogHandler) {
    let handler = InMemoryLogHandler()
    var logger = Logger(label: label) { _ in handler }
    logger.logLevel = .debug
    return (logger, handler)
}

extension InMemoryLogHandler {
    func contains(_ message: String, where metadataKey: String? = nil, is value: String? = nil) -> Bool {
        entries.contains { entry in
            guard entry.message.description == message else { return false }
            guard let metadataKey else { return true }
            guard let found = entry.metadata[metadataKey] else { return false }
            return value == nil || found.description == value
        }
    }
}

/// A CURVE server and an allowlist for one test, on a context of its own.
struct ServerFixture {
    let context: SecureContext
    let serverKeys: KeyPair
    let allowlist: Allowlist
    let server: SecureServer
    let logs: InMemoryLogHandler

    static func make(allowing keys: [PublicKey]) async throws -> ServerFixture {
        let context = SecureContext()
        let serverKeys = KeyPair.generate()
        let allowlist = Allowlist(entries: try keys.map { try AllowlistEntry(certificate: Certificate(publicKey: $0)) })
        let (logger, logs) = capturingLogger("server")
        let server = try await SecureServer.bind(["tcp://127.0.0.1:*"], keyPair: serverKeys, allowlist: allowlist,
                                                 context: context, logger: logger)
        return ServerFixture(context: context, serverKeys: serverKeys, allowlist: allowlist, server: server, logs: logs)
    }

    var endpoint: String { server.endpoints[0] }

    func connect(_ keys: KeyPair, options: ConnectionOptions = ConnectionOptions()) async throws(SecureMQError) -> SecureConnection {
        try await SecureConnection.connect(to: endpoint, serverKey: serverKeys.publicKey, keyPair: keys,
                                           context: context, options: options)
    }
}
