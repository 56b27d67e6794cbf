import Foundation
import SMQKeys

/// One peer's key pair on disk, as `keygen new` writes it.
struct TestPeer: Sendable, CustomStringConvertible {
    let name: String
    let publicKey: PublicKey
    /// `NAME.key`: what goes into the broker's allowlist.
    let publicPath: String
    /// `NAME.key_secret` (mode 0600): what the peer passes as `--cert`.
    let secretPath: String

    /// What the broker logs as `key=` and `smq submit --per-worker` prints.
    var fingerprint: String { publicKey.fingerprint }

    var description: String { "\(name) (\(fingerprint))" }
}

/// A deployment's keys in a scratch directory, laid out as `certs/README.md` describes:
/// `certs/broker.key{,_secret}`, one pair per peer, and `certs/allowed/` with the public files
/// of the peers let in. Made with the SMQKeys API (`keygen` itself has its own tests).
struct TestCertificates: Sendable {
    let directory: String
    let broker: TestPeer

    /// The broker's allowlist directory.
    var allowlist: String { directory + "/allowed" }

    /// Makes `parent/certs`, `parent/certs/allowed` and the broker's pair.
    init(in parent: String) throws {
        directory = parent + "/certs"
        try FileManager.default.createDirectory(atPath: directory + "/allowed", withIntermediateDirectories: true)
        broker = try Self.make(in: directory, name: "broker", metadata: [("name", "broker")])
    }

    /// A worker key, allowlisted unless `allowed` is false.
    func worker(_ name: String, weight: Int = 1, services: String? = nil, allowed: Bool = true) throws -> TestPeer {
        var metadata = [("name", name), ("role", "worker"), ("weight", "\(weight)")]
        if let services { metadata.append(("services", services)) }
        return try peer(name, metadata: metadata, allowed: allowed)
    }

    /// A client key, allowlisted unless `allowed` is false.
    func client(_ name: String, allowed: Bool = true) throws -> TestPeer {
        try peer(name, metadata: [("name", name), ("role", "client")], allowed: allowed)
    }

    /// A key with any metadata (no `role` gets the broker's `--default-role`).
    func peer(_ name: String, metadata: [(String, String)], allowed: Bool = true) throws -> TestPeer {
        let peer = try Self.make(in: directory, name: name, metadata: metadata)
        if allowed { try allow(peer) }
        return peer
    }

    /// The path of `peer`'s file in the allowlist.
    func allowlistPath(of peer: TestPeer) -> String { allowlist + "/" + peer.name + ".key" }

    /// Copies the peer's public file into the allowlist (as an operator does with `cp`).
    func allow(_ peer: TestPeer) throws {
        try FileManager.default.copyItem(atPath: peer.publicPath, toPath: allowlistPath(of: peer))
    }

    /// Removes the peer's public file from the allowlist (revocation).
    func revoke(_ peer: TestPeer) throws {
        try FileManager.default.removeItem(atPath: allowlistPath(of: peer))
    }

    private static func make(in directory: String, name: String, metadata: [(String, String)]) throws -> TestPeer {
        let keys = KeyPair.generate()
        let saved = try Certificate(keyPair: keys, metadata: CertificateMetadata(metadata)).save(directory: directory, name: name)
        guard let secretPath = saved.secretPath else { throw HarnessError("no secret file written for \(name)") }
        return TestPeer(name: name, publicKey: keys.publicKey, publicPath: saved.publicPath, secretPath: secretPath)
    }
}
