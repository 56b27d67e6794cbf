import ArgumentParser
import SecureMQ

extension Keygen {
    struct Inspect: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Show what a certificate file holds (never the secret key itself).",
            discussion: """
                Prints the format (secureMQ, pyzmq, czmq or zpl), the public key and its \
                fingerprint, whether a secret key is present, and the metadata. Warns (without \
                failing) when a secret file is readable by others or the metadata is not usable in \
                an allowlist.

                Examples:
                  keygen inspect certs/broker.key
                  keygen inspect certs/broker.key_secret --json
                """
        )

        @Argument(help: "A certificate file: NAME.key or NAME.key_secret (SecureMQ, pyzmq), NAME or NAME_secret (CZMQ).")
        var file: String

        @Flag(help: "Print JSON for scripts.")
        var json = false

        struct Report: Encodable {
            let file: String
            let format: String
            let publicKey: String
            let fingerprint: String
            let hasSecretKey: Bool
            let metadata: [String: String]
            let warnings: [String]
        }

        func run() throws {
            let certificate = try Certificate.load(path: file, allowInsecurePermissions: true)
            var warnings: [String] = []
            if certificate.hasSecretKey {
                do { try Certificate.checkSecretFilePermissions(path: file) } catch { warnings.append(error.message) }
            }
            do {
                _ = try AllowlistEntry(certificate: certificate)
            } catch {
                warnings.append("not usable in an allowlist: \(error.message)")
            }

            if json {
                try printJSON(Report(
                    file: file, format: certificate.format.name, publicKey: certificate.publicKey.z85,
                    fingerprint: certificate.publicKey.fingerprint, hasSecretKey: certificate.hasSecretKey,
                    metadata: Dictionary(certificate.metadata.pairs, uniquingKeysWith: { first, _ in first }),
                    warnings: warnings))
            } else {
                // Parsing refuses non-printable metadata; escaping here keeps that true of the
                // file name too, and of anything a future format lets through.
                print("file:        \(PeerText.escaped(file))")
                print("format:      \(certificate.format)")
                print("public key:  \(certificate.publicKey.z85)")
                print("fingerprint: \(certificate.publicKey.fingerprint)")
                print("secret key:  \(certificate.hasSecretKey ? "present (not shown)" : "none (public certificate)")")
                print(certificate.metadata.isEmpty ? "metadata:    none" : "metadata:")
                for (name, value) in certificate.metadata {
                    print("    \(PeerText.escaped(name)) = \"\(PeerText.escaped(value))\"")
                }
            }
            for warning in warnings { printError("warning: \(warning)") }
        }
    }
}
