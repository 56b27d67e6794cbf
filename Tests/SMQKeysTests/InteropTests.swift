import Foundation
import Glibc
import Testing
@testable import SMQKeys

/// The real peers: pyzmq (in the venv `scripts/test` makes) and CZMQ (Debian's libczmq, through a
/// tiny C program compiled at test time). A missing peer fails the test with what to run; it never
/// passes silently.
enum Peers {
    static let howToGetThem = "run scripts/test (it runs scripts/ensure-deps --test: the pyzmq venv in .venv and libczmq-dev), or set SMQ_PYTHON to a Python with pyzmq"

    static func python() throws -> String {
        let candidates = [ProcessInfo.processInfo.environment["SMQ_PYTHON"], packageRoot + "/.venv/bin/python"]
            .compactMap { $0 }.filter { !$0.isEmpty }
        let found = candidates.first { FileManager.default.isExecutableFile(atPath: $0) }
        let python = try #require(found, "no Python for the pyzmq interop tests (tried \(candidates)): \(howToGetThem)")
        let check = try runProgram(python, ["-c", "import zmq.auth"])
        try #require(check.status == 0, "\(python) cannot import zmq.auth (\(check.stderr)): \(howToGetThem)")
        return python
    }

    /// Compiles Fixtures/czmq-peer.h into `directory` and returns the program's path.
    static func czmq(in directory: String) throws -> String {
        let source = packageRoot + "/Tests/SMQKeysTests/Fixtures/czmq-peer.h"
        let program = directory + "/czmq-peer"
        let build = try runProgram("/usr/bin/env", ["cc", "-x", "c", "-o", program, source, "-lczmq"])
        try #require(build.status == 0, "cannot compile the CZMQ test peer (\(build.stderr)): \(howToGetThem)")
        return program
    }

    struct CZMQCertificate {
        var publicText = ""
        var secretText = ""
        var metadata: [String: String] = [:]
    }

    static func parseCZMQOutput(_ output: String) -> CZMQCertificate {
        var result = CZMQCertificate()
        for line in output.split(separator: "\n") {
            if line.hasPrefix("public=") { result.publicText = String(line.dropFirst(7)) }
            if line.hasPrefix("secret=") { result.secretText = String(line.dropFirst(7)) }
            if line.hasPrefix("meta "), let equals = line.firstIndex(of: "=") {
                result.metadata[String(line[line.index(line.startIndex, offsetBy: 5)..<equals])] = String(line[line.index(after: equals)...])
            }
        }
        return result
    }

    struct PythonKeys: Decodable {
        let `public`: String
        let secret: String?
    }

    static func pyzmqLoad(_ python: String, _ path: String) throws -> PythonKeys {
        let script = """
            import json, sys, zmq.auth
            p, s = zmq.auth.load_certificate(sys.argv[1])
            print(json.dumps({"public": p.decode(), "secret": s.decode() if s else None}))
            """
        let run = try runProgram(python, ["-c", script, path])
        try #require(run.status == 0, "pyzmq load_certificate failed: \(run.stderr)")
        return try JSONDecoder().decode(PythonKeys.self, from: Data(run.stdout.utf8))
    }

    static func metadataDictionary(_ metadata: CertificateMetadata) -> [String: String] {
        Dictionary(uniqueKeysWithValues: metadata.pairs.map { ($0.name, $0.value) })
    }
}

@Suite struct PyzmqInteropTests {
    /// pyzmq's `create_certificates`, with the umask a desktop has (so the secret file is 0644).
    func create(_ python: String, in dir: String, name: String, metadata: [String: String]) throws -> (publicPath: String, secretPath: String) {
        let script = """
            import json, os, sys, zmq.auth
            os.umask(0o022)
            pub, sec = zmq.auth.create_certificates(sys.argv[1], sys.argv[2], metadata=json.loads(sys.argv[3]))
            print(pub)
            print(sec)
            """
        let json = String(decoding: try JSONSerialization.data(withJSONObject: metadata), as: UTF8.self)
        let run = try runProgram(python, ["-c", script, dir, name, json])
        try #require(run.status == 0, "pyzmq create_certificates failed: \(run.stderr)")
        let lines = run.stdout.split(separator: "\n").map(String.init)
        try #require(lines.count == 2)
        return (lines[0], lines[1])
    }

    @Test func pyzmqCertificatesLoadWithTheSameKeysAndMetadata() throws {
        let python = try Peers.python()
        try withTemporaryDirectory { dir in
            let metadata = ["name": "py-worker", "role": "worker", "weight": "4", "note": "two words"]
            let paths = try create(python, in: dir, name: "py-worker", metadata: metadata)
            #expect(paths.publicPath == dir + "/py-worker.key")
            #expect(paths.secretPath == dir + "/py-worker.key_secret")
            let keys = try Peers.pyzmqLoad(python, paths.secretPath)

            // pyzmq leaves the secret readable by all; we refuse it and say how to fix it.
            let refused = try #require(throws: CertificateError.self) { _ = try Certificate.load(path: paths.secretPath) }
            #expect(refused.code == .insecurePermissions)
            #expect(refused.message.contains("chmod 600 \(paths.secretPath)"))

            #expect(chmod(paths.secretPath, 0o600) == 0)
            let secret = try Certificate.load(path: paths.secretPath)
            #expect(secret.publicKey.z85 == keys.public)
            #expect(secret.secretKey?.z85Text == keys.secret)
            #expect(Peers.metadataDictionary(secret.metadata) == metadata)
            #expect(secret.format == .pyzmq)
            #expect(try secret.keyPair().publicKey == secret.publicKey)

            // pyzmq writes no metadata into the public file: the key alone, which is fine.
            let pub = try Certificate.load(path: paths.publicPath)
            #expect(pub.publicKey.z85 == keys.public)
            #expect(pub.secretKey == nil)
            #expect(pub.metadata.isEmpty)
            #expect(pub.format == .pyzmq)

            // And a pyzmq public file is a valid allowlist entry.
            try FileManager.default.removeItem(atPath: paths.secretPath)
            let list = try Allowlist(directory: dir)
            #expect(list.entries.map(\.publicKey.z85) == [keys.public])
            #expect(list.problems.isEmpty)
        }
    }

    @Test func pyzmqUnquotedHashIsReportedNotCut() throws {
        let python = try Peers.python()
        try withTemporaryDirectory { dir in
            let paths = try create(python, in: dir, name: "p", metadata: ["note": "a#b"])
            #expect(chmod(paths.secretPath, 0o600) == 0)
            let error = try #require(throws: CertificateError.self) { _ = try Certificate.load(path: paths.secretPath) }
            #expect(error.code == .syntax)
            #expect(error.path == paths.secretPath)
            // 3 banner lines, a blank line, "metadata", then the value.
            #expect(error.line == 6)
            #expect(error.message.contains("double quotes"))
        }
    }

    @Test func ourFilesLoadInPyzmq() throws {
        let python = try Peers.python()
        try withTemporaryDirectory { dir in
            let pair = KeyPair.generate()
            let paths = try Certificate(keyPair: pair, metadata: ["name": "swift", "note": "a#b c'd"]).save(directory: dir, name: "swift")
            let fromSecret = try Peers.pyzmqLoad(python, try #require(paths.secretPath))
            #expect(fromSecret.public == pair.publicKey.z85)
            #expect(fromSecret.secret == pair.secretKey.z85Text)
            let fromPublic = try Peers.pyzmqLoad(python, paths.publicPath)
            #expect(fromPublic.public == pair.publicKey.z85)
            #expect(fromPublic.secret == nil)
        }
    }
}

@Suite struct CZMQInteropTests {
    @Test func czmqCertificatesLoadWithTheSameKeysAndMetadata() throws {
        try withTemporaryDirectory { dir in
            let peer = try Peers.czmq(in: dir)
            let metadata = ["role": "worker", "note": "a#b", "name": "CZMQ worker 1", "weight": "2"]
            let run = try runProgram(peer, ["write", dir, "w1"] + metadata.sorted { $0.key < $1.key }.flatMap { [$0.key, $0.value] })
            try #require(run.status == 0, "\(run.stderr)")
            let written = Peers.parseCZMQOutput(run.stdout)
            #expect(written.metadata == metadata)

            let secret = try Certificate.load(path: dir + "/w1_secret")
            #expect(secret.publicKey.z85 == written.publicText)
            #expect(secret.secretKey?.z85Text == written.secretText)
            #expect(Peers.metadataDictionary(secret.metadata) == metadata)
            #expect(secret.format == .czmq)

            let pub = try Certificate.load(path: dir + "/w1")
            #expect(pub.publicKey.z85 == written.publicText)
            #expect(pub.secretKey == nil)
            #expect(Peers.metadataDictionary(pub.metadata) == metadata)

            // A CZMQ public file (no .key suffix) works in an allowlist, its policy read from metadata.
            try FileManager.default.removeItem(atPath: dir + "/w1_secret")
            try FileManager.default.removeItem(atPath: peer)
            let entry = try #require(try Allowlist(directory: dir).entries.first)
            #expect(entry.name == "CZMQ worker 1")
            #expect(entry.role == .worker)
            #expect(entry.weight == 2)
        }
    }

    @Test func czmqValueWithAQuoteIsReported() throws {
        try withTemporaryDirectory { dir in
            let peer = try Peers.czmq(in: dir)
            let run = try runProgram(peer, ["write", dir, "q", "name", "say \"hi\""])
            try #require(run.status == 0, "\(run.stderr)")
            // CZMQ writes name = "say "hi"" and cannot read it back; we say where it is.
            let error = try #require(throws: CertificateError.self) { _ = try Certificate.load(path: dir + "/q") }
            #expect(error.code == .syntax)
            #expect(error.path == dir + "/q")
            #expect(error.line == 8)
        }
    }

    @Test func ourFilesLoadInCZMQWithKeysAndMetadata() throws {
        try withTemporaryDirectory { dir in
            let peer = try Peers.czmq(in: dir)
            let pair = KeyPair.generate()
            let metadata: CertificateMetadata = ["name": "swift-worker", "role": "worker", "weight": "3", "note": "a#b c'd", "empty": ""]
            try Certificate(keyPair: pair, metadata: metadata).save(directory: dir, name: "swift")

            // zcert_load("X.key") reads X.key_secret first.
            let run = try runProgram(peer, ["read", dir + "/swift.key"])
            try #require(run.status == 0, "zcert_load failed: \(run.stderr)")
            let read = Peers.parseCZMQOutput(run.stdout)
            #expect(read.publicText == pair.publicKey.z85)
            #expect(read.secretText == pair.secretKey.z85Text)
            #expect(read.metadata == Peers.metadataDictionary(metadata))

            // A public-only certificate: CZMQ reads its metadata from the public file.
            let other = KeyPair.generate().publicKey
            try Certificate(publicKey: other, metadata: metadata).save(directory: dir, name: "peer")
            let publicRun = try runProgram(peer, ["read", dir + "/peer.key"])
            try #require(publicRun.status == 0, "zcert_load failed: \(publicRun.stderr)")
            let publicRead = Peers.parseCZMQOutput(publicRun.stdout)
            #expect(publicRead.publicText == other.z85)
            #expect(publicRead.secretText == String(repeating: "0", count: 40))
            #expect(publicRead.metadata == Peers.metadataDictionary(metadata))
        }
    }
}
