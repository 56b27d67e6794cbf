internal import CZeroMQ

/// The only ways SecureMQ configures a socket: CURVE always, limits always.
extension ZMQSocket {
    /// A CURVE server: our secret key and a ZAP domain that the library's ZAP handler serves.
    /// There is no path that makes a server socket without both.
    func configureCurveServer(keyPair: KeyPair, zapDomain: String) throws(SecureMQError) {
        try set(ZMQ_CURVE_SERVER, 1)
        try keyPair.secretKey.withUnsafeBytes { (secret) throws(SecureMQError) in try set(ZMQ_CURVE_SECRETKEY, bytes: secret) }
        try set(ZMQ_ZAP_DOMAIN, string: zapDomain)
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
