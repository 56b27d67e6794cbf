import ArgumentParser
import SecureMQ

extension Keygen {
    struct New: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Make a new key pair: NAME.key and NAME.key_secret (mode 0600).",
            discussion: """
                The metadata gets name = NAME unless --meta name=… says otherwise, and the role, \
                weight and --meta pairs you give. An existing file is never replaced unless you pass \
                --force (the old key is then lost for good).

                Examples:
                  keygen new broker --dir certs
                  keygen new worker-1 --dir certs --role worker --weight 4
                  keygen new client-1 --dir certs --role client --meta services=hash,resize

                To let a peer in, copy its NAME.key (never the _secret) into the broker's \
                allowlist directory.
                """
        )

        @Argument(help: "The certificate's name: letters, digits and . _ + - (without .key).")
        var name: String

        @Option(help: ArgumentHelp("The directory to write into (it must exist).", valueName: "dir"))
        var dir: String = "."

        @Option(help: ArgumentHelp("The peer's role in an allowlist: client, worker or both.", valueName: "role"))
        var role: String?

        @Option(help: ArgumentHelp("A worker's weight, 1 to 1000: its share of the work (default 1).", valueName: "n"))
        var weight: Int?

        @Option(parsing: .unconditionalSingleValue, help: ArgumentHelp("Extra metadata as name=value; repeat for more.", valueName: "name=value"))
        var meta: [String] = []

        @Flag(help: "Replace existing NAME.key and NAME.key_secret (the old key is lost).")
        var force = false

        func validate() throws {
            do {
                try Certificate.validate(fileName: name)
            } catch {
                throw ValidationError(error.message)
            }
            _ = try metadata()
        }

        /// The metadata the options describe, checked as the allowlist will check it.
        func metadata() throws -> CertificateMetadata {
            var extra: [(String, String)] = []
            for item in meta {
                guard let equals = item.firstIndex(of: "="), equals != item.startIndex else {
                    throw ValidationError("--meta '\(item)' is not name=value: write it as --meta name=value")
                }
                let pair = (String(item[..<equals]), String(item[item.index(after: equals)...]))
                if pair.0 == "role" && role != nil || pair.0 == "weight" && weight != nil {
                    throw ValidationError("--meta \(pair.0)=… and --\(pair.0) both set the \(pair.0): give one of them")
                }
                if extra.contains(where: { $0.0 == pair.0 }) {
                    throw ValidationError("--meta \(pair.0)=… is given twice: give each name once")
                }
                extra.append(pair)
            }
            if let role, PeerRole(rawValue: role) == nil {
                throw ValidationError("unknown role '\(role)': use client, worker or both")
            }
            if let weight, !AllowlistEntry.weightRange.contains(weight) {
                throw ValidationError("--weight must be a whole number from 1 to 1000; got \(weight)")
            }
            var pairs: [(String, String)] = []
            if !extra.contains(where: { $0.0 == "name" }) { pairs.append(("name", name)) }
            if let role { pairs.append(("role", role)) }
            if let weight { pairs.append(("weight", String(weight))) }
            pairs += extra
            do {
                let metadata = try CertificateMetadata(validating: pairs)
                // Role, weight and services given through --meta are checked as the allowlist does.
                _ = try AllowlistEntry(certificate: Certificate(publicKey: KeyPair.generate().publicKey, metadata: metadata))
                return metadata
            } catch {
                throw ValidationError(error.message)
            }
        }

        func run() throws {
            let certificate = Certificate(keyPair: .generate(), metadata: try metadata())
            let paths: (publicPath: String, secretPath: String?)
            do {
                paths = try certificate.save(directory: dir, name: name, overwrite: force)
            } catch {
                // (A `catch where` on a typed error crashes the Swift 6.3.1 compiler here.)
                guard error.code == .alreadyExists else { throw error }
                throw CLIError("\(error.path ?? name) already exists: choose another name, or pass --force to replace it (the old key is then lost)")
            }
            print("public certificate: \(paths.publicPath)")
            if let secretPath = paths.secretPath {
                print("secret certificate: \(secretPath) (mode 0600: keep it private, never commit it)")
            }
            print("public key: \(certificate.publicKey.z85)")
        }
    }
}
