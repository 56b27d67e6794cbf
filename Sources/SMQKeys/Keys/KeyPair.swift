internal import CSodium

/// A CURVE key pair: the identity of a broker, client or worker.
public struct KeyPair: Sendable, CustomStringConvertible {
    public let publicKey: PublicKey
    public let secretKey: SecretKey

    /// Pairs a secret key with its public key, checking that they belong together.
    /// - Throws: ``KeyError`` `.mismatch` when `publicKey` is not derived from `secretKey`.
    public init(publicKey: PublicKey, secretKey: SecretKey) throws(KeyError) {
        let derived = try secretKey.derivePublicKey()
        guard derived == publicKey else {
            throw KeyError(.mismatch, "the public key \(publicKey.fingerprint)… does not belong to this secret key (it derives \(derived.fingerprint)…)")
        }
        self.publicKey = publicKey
        self.secretKey = secretKey
    }

    /// Builds the pair from a secret key alone.
    public init(secretKey: SecretKey) throws(KeyError) {
        self.publicKey = try secretKey.derivePublicKey()
        self.secretKey = secretKey
    }

    /// Makes a new random key pair with libsodium.
    public static func generate() -> KeyPair {
        ensureSodium()
        while true {
            var pub = [UInt8](repeating: 0, count: 32)
            let secret = SecretKey { sec in
                pub.withUnsafeMutableBytes { p in
                    _ = crypto_box_keypair(p.baseAddress!.assumingMemoryBound(to: UInt8.self),
                                           sec.baseAddress!.assumingMemoryBound(to: UInt8.self))
                }
            }
            // A zero key is astronomically unlikely; refusing it keeps the invariant absolute.
            if let publicKey = try? PublicKey(bytes: pub), let pair = try? KeyPair(publicKey: publicKey, secretKey: secret) {
                return pair
            }
        }
    }

    public var description: String { "KeyPair(public: \(publicKey.z85))" }
}

/// libsodium must be initialised once before use; sodium_init is idempotent and thread-safe.
func ensureSodium() {
    _ = sodiumReady
}
private let sodiumReady: Bool = sodium_init() >= 0
