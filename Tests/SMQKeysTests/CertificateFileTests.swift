import Foundation
import Glibc
import Testing
@testable import SMQKeys

@Suite struct CertificateParsingTests {
    let pair = KeyPair.generate()

    @Test func readsPyzmqStyleUnquotedMetadataAndComments() throws {
        let text = """
            #   ****  Generated on 2024-01-01 by pyzmq  ****
            #   ZeroMQ CURVE **Secret** Certificate

            metadata
                role = worker
                weight = 4      # a trailing comment
                note = two words
            curve
                public-key = "\(pair.publicKey.z85)"
                secret-key = "\(pair.secretKey.z85Text)"

            """
        let certificate = try Certificate.parse(Array(text.utf8), path: "w.key_secret", secretFile: true)
        #expect(certificate.publicKey == pair.publicKey)
        #expect(certificate.secretKey?.z85Text == pair.secretKey.z85Text)
        #expect(certificate.format == .pyzmq)
        #expect(certificate.metadata.pairs.map { "\($0.name)=\($0.value)" } == ["role=worker", "weight=4", "note=two words"])
    }

    @Test func readsCZMQStyleQuotedValuesWithHashAndCRLF() throws {
        let text = "#   ****  Generated on 2024-01-01 12:00:00 by CZMQ  ****\r\n"
            + "#   ZeroMQ CURVE Public Certificate\r\n\r\n"
            + "metadata\r\n    note = \"a#b\"    # comment after a quoted value\r\n"
            + "    quote = 'it is x'\r\n"
            + "        # an indented comment\r\n"
            + "curve\r\n    public-key = \"\(pair.publicKey.z85)\"\r\n"
        let certificate = try Certificate.parse(Array(text.utf8), path: "w", secretFile: false)
        #expect(certificate.format == .czmq)
        #expect(certificate.metadata["note"] == "a#b")
        #expect(certificate.metadata["quote"] == "it is x")
        #expect(certificate.secretKey == nil)
    }

    @Test func emptyMetadataSectionAndMissingMetadataSectionAreFine() throws {
        let bare = "curve\n    public-key = \"\(pair.publicKey.z85)\"\n"
        #expect(try Certificate.parse(Array(bare.utf8), path: nil, secretFile: false).metadata.isEmpty)
        #expect(try Certificate.parse(Array(bare.utf8), path: nil, secretFile: false).format == .zpl)
        let empty = "metadata\n" + bare
        #expect(try Certificate.parse(Array(empty.utf8), path: nil, secretFile: false).publicKey == pair.publicKey)
    }

    struct Rejection: Sendable, CustomTestStringConvertible {
        let label: String
        let text: String
        let secretFile: Bool
        let code: CertificateError.Code
        let line: Int?
        var testDescription: String { label }
    }

    static let otherPair = KeyPair.generate()
    static let key = KeyPair.generate()

    static let rejections: [Rejection] = {
        let pub = key.publicKey.z85
        let sec = key.secretKey.z85Text
        func file(_ metadata: [String] = [], publicKey: String = pub, secret: String? = nil) -> String {
            var lines = ["#   comment", "metadata"] + metadata + ["curve", "    public-key = \"\(publicKey)\""]
            if let secret { lines.append("    secret-key = \"\(secret)\"") }
            return lines.joined(separator: "\n") + "\n"
        }
        let zeros = String(repeating: "0", count: 40)
        return [
            Rejection(label: "invalid Z85 character", text: file(publicKey: "~" + pub.dropFirst()), secretFile: false, code: .invalidKey, line: 4),
            Rejection(label: "key of 39 characters", text: file(publicKey: String(pub.dropLast())), secretFile: false, code: .invalidKey, line: 4),
            Rejection(label: "key of 41 characters", text: file(publicKey: pub + "0"), secretFile: false, code: .invalidKey, line: 4),
            Rejection(label: "Z85 group above 2^32", text: file(publicKey: "#####" + pub.dropFirst(5)), secretFile: false, code: .invalidKey, line: 4),
            Rejection(label: "all-zero public key", text: file(publicKey: zeros), secretFile: false, code: .invalidKey, line: 4),
            Rejection(label: "all-zero secret key", text: file(secret: zeros), secretFile: true, code: .invalidKey, line: 5),
            Rejection(label: "secret of another public key", text: file(secret: otherPair.secretKey.z85Text), secretFile: true, code: .keyMismatch, line: 5),
            Rejection(label: "secret file without secret-key", text: file(), secretFile: true, code: .missingKey, line: nil),
            Rejection(label: "secret-key in a public file", text: file(secret: sec), secretFile: false, code: .unexpectedSecret, line: 5),
            Rejection(label: "no public-key", text: "metadata\ncurve\n", secretFile: false, code: .missingKey, line: nil),
            Rejection(label: "metadata name with @", text: file(["    bad@name = \"x\""]), secretFile: false, code: .invalidMetadata, line: 3),
            Rejection(label: "metadata name with /", text: file(["    a/b = \"x\""]), secretFile: false, code: .invalidMetadata, line: 3),
            Rejection(label: "metadata name pyzmq reads as the key", text: file(["    public-key-hint = \"x\""]), secretFile: false, code: .invalidMetadata, line: 3),
            Rejection(label: "value with a double quote (single-quoted)", text: file(["    name = 'a\"b'"]), secretFile: false, code: .invalidMetadata, line: 3),
            Rejection(label: "value with a double quote (bare)", text: file(["    name = a\"b"]), secretFile: false, code: .invalidMetadata, line: 3),
            Rejection(label: "metadata name twice", text: file(["    role = \"client\"", "    role = \"worker\""]), secretFile: false, code: .invalidMetadata, line: 4),
            Rejection(label: "2-space indentation", text: file(["  role = \"client\""]), secretFile: false, code: .syntax, line: 3),
            Rejection(label: "tab indentation", text: file(["\trole = \"client\""]), secretFile: false, code: .syntax, line: 3),
            Rejection(label: "indented too deep", text: file(["        role = \"client\""]), secretFile: false, code: .syntax, line: 3),
            Rejection(label: "property nested under a property", text: file(["    role = \"client\"", "        x = \"y\""]), secretFile: false, code: .syntax, line: 4),
            Rejection(label: "missing closing quote", text: file(["    role = \"client"]), secretFile: false, code: .syntax, line: 3),
            Rejection(label: "text after a quoted value", text: file(["    role = \"client\" extra"]), secretFile: false, code: .syntax, line: 3),
            Rejection(label: "no '=' between name and value", text: file(["    role client"]), secretFile: false, code: .syntax, line: 3),
            Rejection(label: "property without value", text: file(["    role"]), secretFile: false, code: .syntax, line: 3),
            Rejection(label: "unknown section", text: "#   c\nkeys\n    public-key = \"\(pub)\"\n", secretFile: false, code: .syntax, line: 2),
            Rejection(label: "top-level property", text: "role = \"worker\"\n" + file(), secretFile: false, code: .syntax, line: 1),
            Rejection(label: "unknown curve property", text: file() + "    private-key = \"x\"\n", secretFile: false, code: .syntax, line: 5),
            Rejection(label: "second curve section", text: file() + "curve\n", secretFile: false, code: .syntax, line: 5),
            Rejection(label: "second public-key", text: file() + "    public-key = \"\(pub)\"\n", secretFile: false, code: .syntax, line: 5),
            Rejection(label: "name starting with a symbol", text: file(["    =x"]), secretFile: false, code: .syntax, line: 3),
            Rejection(label: "'#' inside an unquoted value", text: file(["    note = a#b"]), secretFile: false, code: .syntax, line: 3),
            Rejection(label: "control character", text: file(["    role = \"a\u{01}b\""]), secretFile: false, code: .syntax, line: 3),
        ]
    }()

    @Test(arguments: rejections)
    func rejectsWithFileAndLine(_ case_: Rejection) throws {
        let path = case_.secretFile ? "certs/x.key_secret" : "certs/x.key"
        let error = try #require(throws: CertificateError.self) {
            _ = try Certificate.parse(Array(case_.text.utf8), path: path, secretFile: case_.secretFile)
        }
        #expect(error.code == case_.code, "\(error)")
        #expect(error.path == path)
        #expect(error.line == case_.line, "\(error)")
        #expect(error.description.hasPrefix(case_.line.map { "\(path):\($0): " } ?? "\(path): "))
        // A refusal never quotes the secret it refused.
        #expect(!error.description.contains(Self.key.secretKey.z85Text))
    }

    @Test func byteOrderMarkIsSkipped() throws {
        let bytes = [0xEF, 0xBB, 0xBF] + Array("metadata\n    role = \"worker\"\ncurve\n    public-key = \"\(pair.publicKey.z85)\"\n".utf8)
        #expect(try Certificate.parse(bytes, path: nil, secretFile: false).metadata["role"] == "worker")
    }

    @Test func invalidUTF8IsRejectedWithItsLine() throws {
        var bytes = Array("metadata\n    name = \"".utf8)
        bytes += [0xC3, 0x28]
        bytes += Array("\"\n".utf8)
        let error = try #require(throws: CertificateError.self) {
            _ = try Certificate.parse(bytes, path: "x.key", secretFile: false)
        }
        #expect(error.code == .syntax)
        #expect(error.line == 2)
    }
}

@Suite struct CertificateWritingTests {
    @Test func writesZPLBothPeersRead() throws {
        try withTemporaryDirectory { dir in
            let pair = KeyPair.generate()
            let certificate = Certificate(keyPair: pair, metadata: ["name": "worker-1", "role": "worker", "note": "a#b c'd"])
            let paths = try certificate.save(directory: dir, name: "worker-1")
            #expect(paths.publicPath == dir + "/worker-1.key")
            #expect(paths.secretPath == dir + "/worker-1.key_secret")

            let publicText = try readFile(paths.publicPath)
            let expectedPublic = """
                #   ****  Generated by SecureMQ  ****
                #   ZeroMQ CURVE Public Certificate
                #   Give this file to the peers that must trust this key: it holds no secret.

                metadata
                    name = "worker-1"
                    role = "worker"
                    note = "a#b c'd"
                curve
                    public-key = "\(pair.publicKey.z85)"

                """
            #expect(publicText == expectedPublic)
            #expect(!publicText.contains(pair.secretKey.z85Text))
            #expect(!publicText.contains("\r") && !publicText.contains("\t"))

            let secretText = try readFile(try #require(paths.secretPath))
            #expect(secretText.contains("Keep it secret"))
            #expect(secretText.contains("    secret-key = \"\(pair.secretKey.z85Text)\"\n"))
            #expect(secretText.contains("    role = \"worker\"\n"))

            let loadedSecret = try Certificate.load(path: try #require(paths.secretPath))
            #expect(loadedSecret.publicKey == pair.publicKey)
            #expect(try loadedSecret.keyPair().secretKey.z85Text == pair.secretKey.z85Text)
            #expect(loadedSecret.metadata == certificate.metadata)
            #expect(loadedSecret.format == .secureMQ)
            #expect(loadedSecret.path == paths.secretPath)

            let loadedPublic = try Certificate.load(path: paths.publicPath)
            #expect(loadedPublic.publicKey == pair.publicKey)
            #expect(loadedPublic.secretKey == nil)
            #expect(loadedPublic.metadata == certificate.metadata)
            #expect(throws: CertificateError.self) { _ = try loadedPublic.keyPair() }
        }
    }

    @Test func publicOnlyCertificateWritesOneFile() throws {
        try withTemporaryDirectory { dir in
            let key = KeyPair.generate().publicKey
            let paths = try Certificate(publicKey: key, metadata: ["role": "client"]).save(directory: dir, name: "client-1")
            #expect(paths.secretPath == nil)
            #expect(!FileManager.default.fileExists(atPath: dir + "/client-1.key_secret"))
            #expect(try Certificate.load(path: paths.publicPath).metadata["role"] == "client")
            #expect(try permissions(of: paths.publicPath) == 0o644)
        }
    }

    @Test func descriptionNeverShowsTheSecret() {
        let pair = KeyPair.generate()
        let certificate = Certificate(keyPair: pair, metadata: ["name": "x"])
        #expect(!certificate.description.contains(pair.secretKey.z85Text))
        #expect(!"\(certificate)".contains(pair.secretKey.z85Text))
        #expect(certificate.description.contains(pair.publicKey.z85))
        #expect(certificate.description.contains("<redacted>"))
    }

    @Test(arguments: ["", "a/b", "../x", ".hidden", "-flag", "x.key", "x_secret", "sp ace", "ümlaut"])
    func refusesBadNames(_ name: String) throws {
        try withTemporaryDirectory { dir in
            let error = try #require(throws: CertificateError.self) {
                try Certificate(keyPair: .generate()).save(directory: dir, name: name)
            }
            #expect(error.code == .invalidName)
            #expect(try FileManager.default.contentsOfDirectory(atPath: dir).isEmpty)
        }
    }

    @Test func refusesMetadataThatCannotBeReadBack() throws {
        try withTemporaryDirectory { dir in
            for metadata: CertificateMetadata in [["bad name": "x"], ["q": "a\"b"], ["nl": "a\nb"], ["long": String(repeating: "x", count: 1020)]] {
                let error = try #require(throws: CertificateError.self) {
                    try Certificate(keyPair: .generate(), metadata: metadata).save(directory: dir, name: "x")
                }
                #expect(error.code == .invalidMetadata)
            }
            #expect(try FileManager.default.contentsOfDirectory(atPath: dir).isEmpty)
        }
    }

    @Test func missingDirectoryIsReported() throws {
        try withTemporaryDirectory { dir in
            let error = try #require(throws: CertificateError.self) {
                try Certificate(keyPair: .generate()).save(directory: dir + "/nope", name: "x")
            }
            #expect(error.code == .notFound)
            #expect(error.message.contains("mkdir -p"))
        }
    }
}

@Suite struct CertificatePermissionTests {
    @Test func secretIsWritten0600AndPublic0644() throws {
        try withTemporaryDirectory { dir in
            // Whatever the umask, the modes are exact. 077 is the umask that would change them
            // (a mode taken from open(2) would lose the public file's 0044); and it is the safe
            // one to set in a process whose other tests run meanwhile: umask 000 would make their
            // allowlist directories world-writable, which the allowlist rightly refuses.
            let old = umask(0o077)
            defer { umask(old) }
            let paths = try Certificate(keyPair: .generate()).save(directory: dir, name: "b")
            #expect(try permissions(of: try #require(paths.secretPath)) == 0o600)
            #expect(try permissions(of: paths.publicPath) == 0o644)
            // No temporary files are left behind.
            #expect(try FileManager.default.contentsOfDirectory(atPath: dir).sorted() == ["b.key", "b.key_secret"])
        }
    }

    @Test func neverOverwritesUnlessAsked() throws {
        try withTemporaryDirectory { dir in
            let first = KeyPair.generate()
            try Certificate(keyPair: first).save(directory: dir, name: "b")
            let before = try readFile(dir + "/b.key_secret")

            let error = try #require(throws: CertificateError.self) {
                try Certificate(keyPair: .generate()).save(directory: dir, name: "b")
            }
            #expect(error.code == .alreadyExists)
            #expect(error.path == dir + "/b.key_secret")
            #expect(try readFile(dir + "/b.key_secret") == before)
            #expect(try Certificate.load(path: dir + "/b.key").publicKey == first.publicKey)

            let second = KeyPair.generate()
            try Certificate(keyPair: second).save(directory: dir, name: "b", overwrite: true)
            #expect(try Certificate.load(path: dir + "/b.key_secret").publicKey == second.publicKey)
            #expect(try Certificate.load(path: dir + "/b.key").publicKey == second.publicKey)
            #expect(try permissions(of: dir + "/b.key_secret") == 0o600)
        }
    }

    @Test func anExistingPublicFileLeavesNoSecretBehind() throws {
        try withTemporaryDirectory { dir in
            let peer = KeyPair.generate().publicKey
            try writeFile(dir + "/b.key", publicFileText(peer))
            let error = try #require(throws: CertificateError.self) {
                try Certificate(keyPair: .generate()).save(directory: dir, name: "b")
            }
            #expect(error.code == .alreadyExists)
            #expect(error.path == dir + "/b.key")
            #expect(!FileManager.default.fileExists(atPath: dir + "/b.key_secret"))
            #expect(try Certificate.load(path: dir + "/b.key").publicKey == peer)
        }
    }

    @Test(arguments: [0o644, 0o640, 0o604, 0o660] as [mode_t])
    func readableSecretIsRefusedWithTheFix(_ mode: mode_t) throws {
        try withTemporaryDirectory { dir in
            let pair = KeyPair.generate()
            let paths = try Certificate(keyPair: pair).save(directory: dir, name: "b")
            let secretPath = try #require(paths.secretPath)
            #expect(chmod(secretPath, mode) == 0)

            let error = try #require(throws: CertificateError.self) { _ = try Certificate.load(path: secretPath) }
            #expect(error.code == .insecurePermissions)
            #expect(error.path == secretPath)
            #expect(error.message.contains("chmod 600 \(secretPath)"))
            #expect(error.message.contains(String(mode, radix: 8)))

            #expect(throws: CertificateError.self) { try Certificate.checkSecretFilePermissions(path: secretPath) }
            let loaded = try Certificate.load(path: secretPath, allowInsecurePermissions: true)
            #expect(loaded.publicKey == pair.publicKey)

            #expect(chmod(secretPath, 0o600) == 0)
            #expect(try Certificate.load(path: secretPath).publicKey == pair.publicKey)
            try Certificate.checkSecretFilePermissions(path: secretPath)
        }
    }

    @Test func publicFilesMayBeReadableByAll() throws {
        try withTemporaryDirectory { dir in
            let key = KeyPair.generate().publicKey
            try writeFile(dir + "/p.key", publicFileText(key), mode: 0o666)
            #expect(try Certificate.load(path: dir + "/p.key").publicKey == key)
        }
    }

    @Test func missingFileAndDirectoryAreNamed() throws {
        try withTemporaryDirectory { dir in
            let missing = try #require(throws: CertificateError.self) { _ = try Certificate.load(path: dir + "/none.key") }
            #expect(missing.code == .notFound)
            #expect(missing.path == dir + "/none.key")
            let directory = try #require(throws: CertificateError.self) { _ = try Certificate.load(path: dir) }
            #expect(directory.code == .io)
            #expect(directory.message.contains("directory"))
        }
    }
}
