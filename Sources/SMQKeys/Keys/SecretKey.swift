internal import CSodium

/// A CURVE secret key, held in memory the library owns and wiped when released.
///
/// It never prints itself: `description` shows only that it is a secret. ``z85Text`` exists for
/// tools that must show a key to a person; a `String` cannot be wiped, so keep that text
/// short-lived (SecureMQ never makes it).
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
    ///
    /// The text is read in place and the decoded bytes are wiped; the `String` itself belongs to
    /// the caller and cannot be wiped (Swift strings offer no way to), so prefer loading a
    /// certificate file, which never makes one.
    /// - Throws: ``KeyError`` `.badLength`, `.badEncoding` or `.zeroKey`.
    public convenience init(z85 text: some StringProtocol) throws(KeyError) {
        try self.init(z85UTF8: text.utf8)
    }

    /// Parses the 40 Z85 characters of a secret key from bytes, such as a slice of a buffer the
    /// caller wipes afterwards: no copy of the text is made, and the decoded bytes are wiped.
    /// - Throws: ``KeyError`` `.badLength`, `.badEncoding` or `.zeroKey`.
    public convenience init(z85UTF8 text: some Collection<UInt8>) throws(KeyError) {
        guard text.count == 40 else {
            throw KeyError(.badLength, "a Z85 key is 40 characters; got \(text.count)")
        }
        var decoded = [UInt8]()
        decoded.reserveCapacity(32)
        defer { decoded.withUnsafeMutableBytes { sodium_memzero($0.baseAddress, $0.count) } }
        do { try Z85.decode(utf8: text, into: &decoded) } catch { throw KeyError(.badEncoding, "invalid Z85 secret key: \(error.message)") }
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

    /// Appends the 40 Z85 characters to `out`, which must have room for them (no reallocation):
    /// how certificate files are written, into a buffer that is wiped afterwards.
    func appendZ85(to out: inout [UInt8]) {
        Z85.encode(UnsafeRawBufferPointer(storage), appendingTo: &out)
    }

    /// The 40-character Z85 text. A `String` cannot be wiped: SecureMQ itself never makes this
    /// one (certificate files are written from ``withUnsafeBytes(_:)`` into a wiped buffer); use it
    /// only where a person must see the key, and keep it short-lived.
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
