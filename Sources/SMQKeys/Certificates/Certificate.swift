/// A CURVE certificate: a public key, optionally its secret key, and metadata.
///
/// On disk a certificate is two ZPL files: the public one (`NAME.key`, give it to peers) and the
/// secret one (`NAME.key_secret`, mode 0600, both keys). SecureMQ reads the files pyzmq and CZMQ
/// write and writes files both of them read back; see ``load(path:allowInsecurePermissions:)``
/// and ``save(directory:name:overwrite:)``.
///
/// `description` never shows the secret key.
public struct Certificate: Sendable, CustomStringConvertible {
    public let publicKey: PublicKey
    /// The secret key; nil for a public certificate.
    public let secretKey: SecretKey?
    public var metadata: CertificateMetadata
    /// Who wrote the file this certificate came from (``CertificateFormat/secureMQ`` for one made
    /// in memory).
    public let format: CertificateFormat
    /// The file it was loaded from; nil for one made in memory.
    public let path: String?

    /// A secret certificate for a key pair.
    public init(keyPair: KeyPair, metadata: CertificateMetadata = .init()) {
        self.init(publicKey: keyPair.publicKey, secretKey: keyPair.secretKey, metadata: metadata, format: .secureMQ, path: nil)
    }

    /// A public certificate: a peer's public key and what we know of it.
    public init(publicKey: PublicKey, metadata: CertificateMetadata = .init()) {
        self.init(publicKey: publicKey, secretKey: nil, metadata: metadata, format: .secureMQ, path: nil)
    }

    init(publicKey: PublicKey, secretKey: SecretKey?, metadata: CertificateMetadata, format: CertificateFormat, path: String?) {
        self.publicKey = publicKey
        self.secretKey = secretKey
        self.metadata = metadata
        self.format = format
        self.path = path
    }

    /// The key pair, for a certificate that has its secret key.
    /// - Throws: ``CertificateError`` `.noSecretKey` for a public certificate.
    public func keyPair() throws(CertificateError) -> KeyPair {
        guard let secretKey else {
            let hint = path.map { ": load the secret file (\(Self.secretPath(forPublic: $0)))" } ?? ""
            throw CertificateError(.noSecretKey, path: path, "this is a public certificate (key \(publicKey.fingerprint)…), it has no secret key\(hint)")
        }
        do {
            return try KeyPair(publicKey: publicKey, secretKey: secretKey)
        } catch {
            throw CertificateError(.keyMismatch, path: path, error.message)
        }
    }

    /// Whether the certificate holds a secret key.
    public var hasSecretKey: Bool { secretKey != nil }

    public var description: String {
        var text = "Certificate(public: \(publicKey.z85), secret: \(secretKey == nil ? "none" : "<redacted>"), format: \(format)"
        if !metadata.isEmpty { text += ", metadata: \(metadata)" }
        if let path { text += ", path: \(path)" }
        return text + ")"
    }
}
