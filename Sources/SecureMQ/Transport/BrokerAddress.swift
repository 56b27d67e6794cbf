public import SMQKeys

/// One broker a client or worker connects to: where it listens and the public key it proves
/// in the CURVE handshake.
///
/// A client or worker given several serves (or uses) them all at once: brokers hold no durable
/// state, so several independent, active brokers need no replication (README, "Running several
/// brokers").
public struct BrokerAddress: Hashable, Sendable, CustomStringConvertible {
    /// The broker's endpoint, e.g. `tcp://10.0.0.5:5555`.
    public var endpoint: String
    /// The broker's public key (its `broker.key`).
    public var publicKey: PublicKey

    public init(_ endpoint: String, key publicKey: PublicKey) {
        self.endpoint = endpoint
        self.publicKey = publicKey
    }

    /// The endpoint and the key's fingerprint, for logs and errors.
    public var description: String { "\(PeerText.escaped(endpoint)) (key \(publicKey.fingerprint))" }
}
