internal import SMQProtocol

/// One peer the broker lets in, and the policy its certificate's metadata sets.
public struct AllowlistEntry: Sendable, Hashable, CustomStringConvertible {
    public let publicKey: PublicKey
    /// `name` from the metadata, or the key's fingerprint.
    public let name: String
    /// `role` from the metadata; nil when the certificate sets none (the broker applies its default).
    public let role: PeerRole?
    /// `weight` from the metadata, 1…1000 (default 1): the worker's share of fragments.
    public let weight: Int
    /// `services` from the metadata; nil means any service.
    public let services: Set<String>?
    public let metadata: CertificateMetadata
    /// The file it came from (nil for in-memory entries).
    public let path: String?

    /// The range of `weight`.
    public static let weightRange = 1...1000

    /// Reads the policy from a certificate's metadata: `role` (`client`, `worker` or `both`),
    /// `weight` (1…1000, default 1), `services` (comma-separated `[A-Za-z0-9._-]{1,255}` names),
    /// `name` (default: the key's fingerprint).
    /// - Parameters:
    ///   - certificate: a public (or secret) certificate; only its public key is kept.
    ///   - path: the file it came from; defaults to the certificate's own path.
    /// - Throws: ``CertificateError`` `.invalidPolicy` naming the field and the values it takes.
    public init(certificate: Certificate, path: String? = nil) throws(CertificateError) {
        let path = path ?? certificate.path
        func fail(_ message: String) -> CertificateError { CertificateError(.invalidPolicy, path: path, message) }
        let metadata = certificate.metadata
        // Parsing already refuses these; a certificate made in memory has not been parsed.
        for (field, value) in metadata.pairs where !PeerText.isPrintable(value) {
            throw fail("metadata '\(field)' holds a control or invisible formatting character ('\(PeerText.escaped(value))'): values must be printable text")
        }

        if let text = metadata["role"] {
            guard let role = PeerRole(rawValue: text) else {
                throw fail("role '\(text)' is not one of client, worker, both")
            }
            self.role = role
        } else {
            role = nil
        }

        if let text = metadata["weight"] {
            guard !text.isEmpty, text.utf8.allSatisfy({ (UInt8(ascii: "0")...UInt8(ascii: "9")).contains($0) }),
                  let weight = Int(text), Self.weightRange.contains(weight) else {
                throw fail("weight '\(text)' is not a whole number from \(Self.weightRange.lowerBound) to \(Self.weightRange.upperBound)")
            }
            self.weight = weight
        } else {
            weight = 1
        }

        if let text = metadata["services"] {
            var names = Set<String>()
            for item in text.split(separator: ",", omittingEmptySubsequences: false) {
                let service = item.trimmingBlanks()
                guard Self.isServiceName(service) else {
                    let shown = service.isEmpty ? "an empty name" : "'\(service)'"
                    throw fail("services '\(text)' has \(shown): list names of 1 to 255 letters, digits, . _ - separated by commas, or remove the line to allow any service")
                }
                names.insert(String(service))
            }
            services = names
        } else {
            services = nil
        }

        if let text = metadata["name"] {
            guard !text.isEmpty else { throw fail("name is empty: give a name or remove the line (the key's fingerprint is the default)") }
            name = text
        } else {
            name = certificate.publicKey.fingerprint
        }

        publicKey = certificate.publicKey
        self.metadata = metadata
        self.path = path
    }

    /// Whether this peer may use `service` (always, when the certificate lists no services).
    public func allows(service: String) -> Bool {
        services?.contains(service) ?? true
    }

    public var description: String {
        "\(name) (\(publicKey.fingerprint)…, role: \(role?.rawValue ?? "default"), weight: \(weight)\(path.map { ", \(PeerText.escaped($0))" } ?? ""))"
    }
}

extension AllowlistEntry {
    static func isServiceName(_ name: some StringProtocol) -> Bool {
        (1...255).contains(name.utf8.count) && name.unicodeScalars.allSatisfy { scalar in
            switch scalar {
            case "a"..."z", "A"..."Z", "0"..."9", ".", "_", "-": true
            default: false
            }
        }
    }
}

extension Substring {
    func trimmingBlanks() -> Substring {
        var result = self
        while result.first == " " { result = result.dropFirst() }
        while result.last == " " { result = result.dropLast() }
        return result
    }
}
