// TEMPORARY: stands in for the certificate/allowlist API until the `keys` branch is merged.
public import Logging
import Synchronization

public struct CertificateMetadata: Sendable, Hashable {
    public var storage: [String] = []
    public init(_ pairs: [(String, String)] = []) { storage = pairs.flatMap { [$0.0, $0.1] } }
    public var pairs: [(name: String, value: String)] { stride(from: 0, to: storage.count, by: 2).map { (storage[$0], storage[$0 + 1]) } }
}
public struct PeerRole: Hashable, Sendable, CustomStringConvertible { public var description: String { rawValue }; public func allows(_ r: PeerRole) -> Bool { self == r || self == .both }; public init?(rawValue: String) { guard ["client","worker","both"].contains(rawValue) else { return nil }; self.rawValue = rawValue }; private init(_ r: String) { rawValue = r }; public let rawValue: String; public static let client = PeerRole("client"), worker = PeerRole("worker"), both = PeerRole("both") }
public struct AllowlistEntry: Sendable, Hashable {
    public let publicKey: PublicKey
    public let name: String
    public let role: PeerRole?
    public let weight: Int
    public let services: Set<String>?
    public let metadata: CertificateMetadata
    public let path: String?
    public init(publicKey: PublicKey, metadata: CertificateMetadata = .init()) { self.publicKey = publicKey; name = publicKey.fingerprint; role = nil; weight = 1; services = nil; self.metadata = metadata; path = nil }
}
public final class Allowlist: Sendable {
    let table: Mutex<[PublicKey: AllowlistEntry]>
    public init(entries: [AllowlistEntry]) { table = Mutex(Dictionary(entries.map { ($0.publicKey, $0) }, uniquingKeysWith: { a, _ in a })) }
    public func entry(for key: PublicKey) -> AllowlistEntry? { table.withLock { $0[key] } }
    public var generation: UInt64 { 0 }
    public func reloadIfChanged() -> Int? { nil }
    public func _set(_ entries: [AllowlistEntry]) { table.withLock { $0 = Dictionary(entries.map { ($0.publicKey, $0) }, uniquingKeysWith: { a, _ in a }) } }
}
public struct Certificate: Sendable {
    public let publicKey: PublicKey
    public init(publicKey: PublicKey) { self.publicKey = publicKey }
}
public struct CertificateError: Error {}
extension AllowlistEntry {
    public init(certificate: Certificate, path: String? = nil) throws(CertificateError) { self.init(publicKey: certificate.publicKey) }
}
