internal import CZeroMQ

/// `ZMQ_ZAP_ENFORCE_DOMAIN`: in libzmq 4.3.4's zmq.h it sits in the DRAFT section, so it does not
/// import, but the library honours it without the DRAFT API (checked here: `zmq_setsockopt` and
/// `zmq_getsockopt` of 93 succeed on Debian's build, and a server with it refuses clients when no
/// ZAP handler answers).
let zmqZAPEnforceDomain: Int32 = 93

/// The only ways SecureMQ configures a socket: CURVE always, limits always.
extension ZMQSocket {
    /// A CURVE server: our secret key and a ZAP domain that the library's ZAP handler serves.
    /// There is no path that makes a server socket without both.
    ///
    /// `ZMQ_ZAP_ENFORCE_DOMAIN` is set too: without it, a server whose context has no ZAP handler
    /// bound (it stopped, or was never started) admits every key ("Stonehouse"); with it the
    /// handshake fails instead. Set before bind, as every option that shapes the handshake.
    func configureCurveServer(keyPair: KeyPair, zapDomain: String) throws(SecureMQError) {
        guard !zapDomain.isEmpty else {
            // An empty domain skips ZAP even with enforcement on (ZEROMQ-NOTES).
            throw SecureMQError(.invalidConfiguration, "a server socket needs a ZAP domain")
        }
        try set(ZMQ_CURVE_SERVER, 1)
        try keyPair.secretKey.withUnsafeBytes { (secret) throws(SecureMQError) in try set(ZMQ_CURVE_SECRETKEY, bytes: secret) }
        try set(ZMQ_ZAP_DOMAIN, string: zapDomain)
        try set(zmqZAPEnforceDomain, 1)
    }

    /// A CURVE client that knows the server's public key.
    func configureCurveClient(keyPair: KeyPair, serverKey: PublicKey) throws(SecureMQError) {
        try set(ZMQ_CURVE_SERVERKEY, bytes: serverKey.bytes)
        try set(ZMQ_CURVE_PUBLICKEY, bytes: keyPair.publicKey.bytes)
        try keyPair.secretKey.withUnsafeBytes { (secret) throws(SecureMQError) in try set(ZMQ_CURVE_SECRETKEY, bytes: secret) }
    }

    /// Limits that must be set before bind/connect: the largest frame (libzmq drops the peer
    /// beyond it), high-water marks, linger, handshake and reconnect intervals.
    func configureLimits(maxMessageSize: Int, highWaterMark: Int32, handshakeTimeout: Duration,
                         reconnectInterval: Duration? = nil, reconnectIntervalMax: Duration? = nil) throws(SecureMQError) {
        // Below ~300 bytes the CURVE handshake itself no longer fits (ZEROMQ-NOTES).
        try set(ZMQ_MAXMSGSIZE, int64: Int64(max(maxMessageSize, 1024)))
        try set(ZMQ_SNDHWM, highWaterMark)
        try set(ZMQ_RCVHWM, highWaterMark)
        try set(ZMQ_HANDSHAKE_IVL, handshakeTimeout.milliseconds)
        if let reconnectInterval { try set(ZMQ_RECONNECT_IVL, reconnectInterval.milliseconds) }
        if let reconnectIntervalMax { try set(ZMQ_RECONNECT_IVL_MAX, reconnectIntervalMax.milliseconds) }
    }
}
