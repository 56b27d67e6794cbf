/// Which program wrote a certificate file, as far as its header comment tells.
///
/// An open set: pyzmq (`zmq.auth.create_certificates`), CZMQ (`zcert_save`), SecureMQ itself,
/// and ``zpl`` for any other writer (hand-written files, other bindings).
public struct CertificateFormat: Hashable, Sendable, CustomStringConvertible {
    public let name: String
    public init(name: String) { self.name = name }
    public var description: String { name }

    /// Written by SecureMQ (`Certificate.save`, `keygen`): `X.key` / `X.key_secret`, values quoted,
    /// metadata in both files.
    public static let secureMQ = CertificateFormat(name: "secureMQ")
    /// Written by pyzmq: `X.key` / `X.key_secret`, metadata only in the secret file, unquoted.
    public static let pyzmq = CertificateFormat(name: "pyzmq")
    /// Written by CZMQ: `X` / `X_secret`, every value quoted, metadata in both files.
    public static let czmq = CertificateFormat(name: "czmq")
    /// ZPL from another writer, or with no header comment.
    public static let zpl = CertificateFormat(name: "zpl")

    /// The writer named by the `Generated … by …` header comment.
    static func detect(comments: [String]) -> CertificateFormat {
        for comment in comments {
            if comment.contains("by SecureMQ") { return .secureMQ }
            if comment.contains("by pyzmq") { return .pyzmq }
            if comment.contains("by CZMQ") { return .czmq }
        }
        return .zpl
    }
}
