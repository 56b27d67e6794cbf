internal import CZeroMQ
import Logging

/// A ROUTER socket bound as a CURVE server, behind the library's ZAP handler. The only way the
/// library makes a server socket: the ZAP domain is registered (and the handler running) before
/// the socket binds, so no key outside the allowlist ever completes a handshake.
/// Confined to its ``SocketThread``.
///
/// It holds its ``SecureContext`` (and so the context's ZAP handler) for as long as it exists:
/// the handler is the only thing that refuses keys, and a context released while a server still
/// listens would stop it and start terminating under the open socket. The context cannot hold
/// its sockets back (they belong to their threads), so the reference goes this way only.
final class CurveServerSocket {
    let socket: ZMQSocket
    let zapDomain: String
    let endpoints: [String]
    /// The public key each endpoint serves, in the order of ``endpoints``.
    let endpointKeys: [PublicKey]
    /// Strong on purpose: see the type's comment.
    let context: SecureContext
    private let zap: ZAPHandler

    convenience init(context: SecureContext, endpoints requested: [String], keyPair: KeyPair, allowlist: Allowlist,
                     maxMessageSize: Int, highWaterMark: Int32, logger: Logger) throws(SecureMQError) {
        try self.init(context: context, listeners: requested.map { ($0, keyPair) }, allowlist: allowlist,
                      maxMessageSize: maxMessageSize, highWaterMark: highWaterMark, logger: logger)
    }

    /// One socket, each endpoint bound with its own key pair. libzmq copies a socket's options
    /// into a listener when it binds, the CURVE secret key among them, so setting the next key
    /// and binding again leaves the earlier endpoints serving theirs (checked on 4.3.4 by
    /// `PerEndpointKeyTests`): a broker serves an old and a new key at once while peers move over.
    init(context: SecureContext, listeners: [(endpoint: String, keyPair: KeyPair)], allowlist: Allowlist,
         maxMessageSize: Int, highWaterMark: Int32, logger: Logger) throws(SecureMQError) {
        let requested = listeners.map(\.endpoint)
        guard let first = listeners.first else {
            throw SecureMQError(.invalidConfiguration, "a server needs at least one endpoint")
        }
        self.context = context
        for endpoint in requested { try Endpoint.validate(endpoint, for: .bind) }
        zap = try context.zapHandler()
        zapDomain = context.makeDomain("securemq")
        try zap.register(domain: zapDomain, allowlist: allowlist, logger: logger)
        do {
            socket = try ZMQSocket(context: context.handle, kind: .router)
        } catch {
            zap.unregister(domain: zapDomain)
            throw error
        }
        do {
            try socket.configureCurveServer(keyPair: first.keyPair, zapDomain: zapDomain)
            try socket.configureLimits(maxMessageSize: maxMessageSize, highWaterMark: highWaterMark, handshakeTimeout: .seconds(10))
            // A ROUTER silently drops what it cannot route unless told to report it.
            try socket.set(ZMQ_ROUTER_MANDATORY, 1)
            var bound: [String] = []
            var current = first.keyPair.publicKey
            for (endpoint, keyPair) in listeners {
                if keyPair.publicKey != current {
                    // Only the secret key changes: CURVE_SERVER and the ZAP domain stay as set.
                    let router = socket
                    try keyPair.secretKey.withUnsafeBytes { (secret) throws(SecureMQError) in try router.set(ZMQ_CURVE_SECRETKEY, bytes: secret) }
                    current = keyPair.publicKey
                }
                try socket.bind(endpoint)
                bound.append(socket.lastEndpoint)
            }
            endpoints = bound
            endpointKeys = listeners.map(\.keyPair.publicKey)
        } catch {
            socket.close(linger: .zero)
            zap.unregister(domain: zapDomain)
            throw error
        }
    }

    func close(linger: Duration) {
        socket.close(linger: linger)
        zap.unregister(domain: zapDomain)
    }
}
