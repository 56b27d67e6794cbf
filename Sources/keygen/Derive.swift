import ArgumentParser
import Glibc
import SecureMQ

extension Keygen {
    struct Derive: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Print the public key that belongs to a secret key.",
            discussion: """
                Give a secret certificate file, or the secret key itself with --secret. Prefer \
                --secret - (read from standard input): a key on the command line is visible to \
                other users in the process list and stays in your shell history.

                Examples:
                  keygen derive certs/broker.key_secret
                  keygen derive --secret - < secret.txt
                """
        )

        @Argument(help: "A secret certificate file (NAME.key_secret, or NAME_secret from CZMQ).")
        var file: String?

        // Unconditional: a Z85 key may start with '-', which would otherwise read as an option.
        @Option(parsing: .unconditional, help: ArgumentHelp("The secret key as 40 Z85 characters, or - to read it from standard input.", valueName: "z85"))
        var secret: String?

        @Flag(help: "Print JSON for scripts.")
        var json = false

        struct Report: Encodable {
            let publicKey: String
            let fingerprint: String
        }

        func validate() throws {
            switch (file, secret) {
            case (nil, nil): throw ValidationError("give a secret certificate file or --secret Z85")
            case (.some, .some): throw ValidationError("give a secret certificate file or --secret, not both")
            default: break
            }
        }

        func run() throws {
            let publicKey: PublicKey
            if let secret {
                do {
                    if secret == "-" {
                        publicKey = try Self.deriveFromStandardInput()
                    } else {
                        publicKey = try SecretKey(z85: secret.trimmingBlanks()).derivePublicKey()
                    }
                } catch let error as KeyError {
                    // Never echo any part of a secret, even an invalid one.
                    let reason = error.code == .badEncoding ? "it is not valid Z85" : error.message
                    throw CLIError("the secret key is not usable: \(reason)")
                }
            } else if let file {
                guard Certificate.isSecretPath(file) else {
                    throw CLIError("\(file) is named like a public certificate: give the secret file (\(Certificate.secretPath(forPublic: file)))")
                }
                publicKey = try Certificate.load(path: file).keyPair().publicKey
            } else {
                throw CLIError("give a secret certificate file or --secret Z85")
            }
            if json {
                try printJSON(Report(publicKey: publicKey.z85, fingerprint: publicKey.fingerprint))
            } else {
                print(publicKey.z85)
            }
        }
    }
}

extension Keygen.Derive {
    /// Reads the first line of standard input into a fixed buffer, decodes the key from it in
    /// place and wipes the buffer: no `String` copy of the secret is made (`readLine` would).
    static func deriveFromStandardInput() throws -> PublicKey {
        var buffer = [UInt8](repeating: 0, count: 4096)
        defer { buffer.withUnsafeMutableBytes { raw in raw.baseAddress.map { explicit_bzero($0, raw.count) } } }
        var count = 0
        while count < buffer.count && !buffer[..<count].contains(0x0A) {
            let got = buffer.withUnsafeMutableBytes { Glibc.read(0, $0.baseAddress! + count, $0.count - count) }
            if got < 0 && errno == EINTR { continue }
            guard got > 0 else { break }
            count += got
        }
        var line = buffer[..<count]
        if let newline = line.firstIndex(of: 0x0A) { line = line[..<newline] }
        let blanks: Set<UInt8> = [0x20, 0x09, 0x0D, 0x0B, 0x0C]
        while let first = line.first, blanks.contains(first) { line = line.dropFirst() }
        while let last = line.last, blanks.contains(last) { line = line.dropLast() }
        guard !line.isEmpty else {
            throw CLIError("--secret -: standard input is empty; pipe the 40-character Z85 secret key in")
        }
        return try SecretKey(z85UTF8: line).derivePublicKey()
    }
}

extension String {
    func trimmingBlanks() -> String {
        var text = Substring(self)
        while let first = text.first, first.isWhitespace { text = text.dropFirst() }
        while let last = text.last, last.isWhitespace { text = text.dropLast() }
        return String(text)
    }
}
