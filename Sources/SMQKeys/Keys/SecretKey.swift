internal import CSodium

/// A CURVE secret key, held in memory the library owns and wiped when released.
///
/// It never prints itself: `description` shows only that it is a secret. The Z85 text is
/// available for writing certificate files (``z85Text``); a `String` cannot be wiped, so keep that
/// text short-lived.
public final class SecretKey: Sendable, CustomStringConvertible {
    // Immutable after init and never handed out except through withUnsafeBytes: safe to share.
    private nonisolated(unsafe) let storage: UnsafeMutableRawBufferPointer

    /// Wraps 32 secret-key bytes (copied into owned memory).
    /// - Throws: ``KeyError`` `.badLength` unless there are 32 bytes, `.zeroKey` if all are zero.
    public init(bytes: some Collection<UInt8>) throws(KeyError) {
        guard bytes.count == 32 else { throw KeyError(.badLength, "a CURVE key is 32 bytes; got \(bytes.count)") }
        guard bytes.contains(where: { $0 != 0 }) else { throw KeyError(.zeroKey, "the secret key is all zeros") }
        storage = .allocate(byteCount: 32, alignment: 16)
        storage.copyBytes(from: bytes)
    }

    /// Parses the 40-character Z85 text of a secret key.
    /// - Throws: ``KeyError`` `.badLength`, `.badEncoding` or `.zeroKey`.
    public convenience init(z85 text: some StringProtocol) throws(KeyError) {
        guard text.utf8.count == 40 else {
            throw KeyError(.badLength, "a Z85 key is 40 characters; got \(text.utf8.count)")
        }
        var decoded: [UInt8]
        do { decoded = try Z85.decode(text) } catch { throw KeyError(.badEncoding, "invalid Z85 secret key: \(error.message)") }
        defer { decoded.withUnsafeMutableBytes { sodium_memzero($0.baseAddress, $0.count) } }
        try self.init(bytes: decoded)
    }

    init(generatingInto body: (UnsafeMutableRawBufferPointer) -> Void) {
        storage = .allocate(byteCount: 32, alignment: 16)
        body(storage)
    }

    deinit {
        sodium_memzero(storage.baseAddress, storage.count)
        storage.deallocate()
    }

    /// Calls `body` with the 32 secret bytes. Do not let the pointer escape.
    public func withUnsafeBytes<R, E: Error>(_ body: (UnsafeRawBufferPointer) throws(E) -> R) throws(E) -> R {
        try body(UnsafeRawBufferPointer(storage))
    }

    /// The 40-character Z85 text, for writing a secret certificate file.
    public var z85Text: String {
        (try? Z85.encode(UnsafeRawBufferPointer(storage))) ?? ""
    }

    /// Derives the public key (Curve25519 scalar multiplication with the base point).
    /// - Throws: ``KeyError`` `.zeroKey` if the result is all zero (never for a real key).
    public func derivePublicKey() throws(KeyError) -> PublicKey {
        var out = [UInt8](repeating: 0, count: 32)
        let rc = out.withUnsafeMutableBytes { pub in
            crypto_scalarmult_base(pub.baseAddress!.assumingMemoryBound(to: UInt8.self),
                                   storage.baseAddress!.assumingMemoryBound(to: UInt8.self))
        }
        guard rc == 0 else { throw KeyError(.zeroKey, "this secret key derives no valid public key") }
        return try PublicKey(bytes: out)
    }

    public var description: String { "SecretKey(<redacted>)" }
}
