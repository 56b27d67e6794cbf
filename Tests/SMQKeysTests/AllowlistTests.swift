import Foundation
import Glibc
import Logging
import Testing
@testable import SMQKeys

@Suite struct PeerRoleTests {
    @Test(arguments: [
        (PeerRole.client, PeerRole.client, true), (.client, .worker, false), (.client, .both, false),
        (.worker, .worker, true), (.worker, .client, false), (.worker, .both, false),
        (.both, .client, true), (.both, .worker, true), (.both, .both, true),
    ])
    func allows(_ role: PeerRole, _ asked: PeerRole, _ expected: Bool) {
        #expect(role.allows(asked) == expected)
    }

    @Test func parsesOnlyTheThreeRoles() {
        #expect(PeerRole(rawValue: "client") == .client)
        #expect(PeerRole(rawValue: "both")?.rawValue == "both")
        #expect(PeerRole(rawValue: "Worker") == nil)
        #expect(PeerRole(rawValue: "admin") == nil)
        #expect(PeerRole.worker.description == "worker")
    }
}

@Suite struct AllowlistEntryTests {
    let key = KeyPair.generate().publicKey

    @Test func defaults() throws {
        let entry = try AllowlistEntry(certificate: Certificate(publicKey: key))
        #expect(entry.name == key.fingerprint)
        #expect(entry.role == nil)
        #expect(entry.weight == 1)
        #expect(entry.services == nil)
        #expect(entry.allows(service: "anything"))
        #expect(entry.path == nil)
    }

    @Test func readsPolicy() throws {
        let metadata: CertificateMetadata = ["name": "worker-1", "role": "worker", "weight": "1000", "services": "hash, resize.v2,score_1"]
        let entry = try AllowlistEntry(certificate: Certificate(publicKey: key, metadata: metadata), path: "a/worker-1.key")
        #expect(entry.name == "worker-1")
        #expect(entry.role == .worker)
        #expect(entry.weight == 1000)
        #expect(entry.services == ["hash", "resize.v2", "score_1"])
        #expect(!entry.allows(service: "other"))
        #expect(entry.path == "a/worker-1.key")
        #expect(entry.metadata == metadata)
    }

    @Test(arguments: [
        ("role", "admin"), ("role", "Worker"), ("role", ""),
        ("weight", "0"), ("weight", "1001"), ("weight", "-1"), ("weight", "+5"), ("weight", " 5"), ("weight", "5.0"),
        ("weight", "four"), ("weight", ""), ("weight", "99999999999999999999999"),
        ("services", ""), ("services", "a,,b"), ("services", "a,"), ("services", "a b"), ("services", "a/b"),
        ("services", String(repeating: "s", count: 256)), ("name", ""),
    ])
    func refusesBadPolicy(_ field: String, _ value: String) throws {
        let certificate = Certificate(publicKey: key, metadata: CertificateMetadata([(field, value)]))
        let error = try #require(throws: CertificateError.self) {
            _ = try AllowlistEntry(certificate: certificate, path: "allowed/x.key")
        }
        #expect(error.code == .invalidPolicy)
        #expect(error.path == "allowed/x.key")
        #expect(error.message.contains(field))
    }
}

@Suite struct AllowlistTests {
    /// Writes a public certificate file for a new key and returns the key.
    @discardableResult
    func addPeer(_ dir: String, _ file: String, _ metadata: CertificateMetadata = [:]) throws -> PublicKey {
        let key = KeyPair.generate().publicKey
        let name = String(file.dropLast(4))
        try Certificate(publicKey: key, metadata: metadata).save(directory: dir, name: name)
        return key
    }

    @Test func loadsGoodFilesAndReportsEachBadOne() throws {
        try withTemporaryDirectory { dir in
            let logs = CapturedLogs()
            let worker = try addPeer(dir, "a-worker.key", ["role": "worker", "weight": "4", "name": "w1"])
            let client = try addPeer(dir, "b-client.key", ["role": "client"])
            // A copy of the worker under a later name: a duplicate key.
            try FileManager.default.copyItem(atPath: dir + "/a-worker.key", toPath: dir + "/c-copy.key")
            try writeFile(dir + "/d-garbage.key", "this is not ZPL =\n")
            try addPeer(dir, "e-admin.key", ["role": "admin"])
            let secret = try Certificate(keyPair: .generate()).save(directory: dir, name: "f-mine").secretPath!
            try FileManager.default.removeItem(atPath: dir + "/f-mine.key")
            try writeFile(dir + "/.hidden.key", "ignored")
            try FileManager.default.createDirectory(atPath: dir + "/subdir", withIntermediateDirectories: false)
            // A FIFO must be reported, not block the reader waiting for a writer.
            #expect(mkfifo(dir + "/g-fifo.key", 0o644) == 0)
            try FileManager.default.createSymbolicLink(atPath: dir + "/h-dangling.key", withDestinationPath: dir + "/nowhere.key")

            let list = try Allowlist(directory: dir, logger: logs.logger)
            #expect(list.entries.map(\.publicKey) == [worker, client])
            #expect(list.entry(for: worker)?.name == "w1")
            #expect(list.entry(for: worker)?.weight == 4)
            #expect(list.entry(for: worker)?.path == dir + "/a-worker.key")
            #expect(list.entry(for: client)?.role == .client)
            #expect(list.entry(for: KeyPair.generate().publicKey) == nil)
            #expect(list.generation == 1)
            #expect(list.skipped.map(\.path) == [dir + "/subdir"])

            let problems = Dictionary(uniqueKeysWithValues: list.problems.map { ($0.path, $0) })
            #expect(problems.count == 6)
            #expect(problems[dir + "/g-fifo.key"]?.code == .io)
            #expect(problems[dir + "/h-dangling.key"]?.code == .symbolicLink)
            #expect(problems[dir + "/c-copy.key"]?.code == .duplicateKey)
            #expect(problems[dir + "/c-copy.key"]?.message.contains(dir + "/a-worker.key") == true)
            #expect(problems[dir + "/d-garbage.key"]?.code == .syntax)
            #expect(problems[dir + "/d-garbage.key"]?.line == 1)
            #expect(problems[dir + "/e-admin.key"]?.code == .invalidPolicy)
            #expect(problems[secret]?.code == .secretInAllowlist)

            // One log line per problem, with file and reason as metadata.
            let warnings = logs.records.filter { $0.level >= .warning }
            #expect(warnings.count == 6)
            for path in [dir + "/d-garbage.key", dir + "/e-admin.key"] {
                let record = try #require(warnings.first { $0.metadata["file"] == path })
                #expect(record.message == "skipping an allowlist file")
                #expect(record.metadata["reason"]?.isEmpty == false)
            }
            let duplicate = try #require(warnings.first { $0.metadata["file"] == dir + "/c-copy.key" })
            #expect(duplicate.metadata["kept"] == dir + "/a-worker.key")
            #expect(warnings.contains { $0.metadata["file"] == secret && $0.level == .error })
        }
    }

    @Test func reloadPicksUpAddedAndRemovedKeys() throws {
        try withTemporaryDirectory { dir in
            let first = try addPeer(dir, "one.key", ["role": "worker"])
            let list = try Allowlist(directory: dir, logger: CapturedLogs().logger)
            #expect(list.reloadIfChanged() == nil)
            #expect(list.generation == 1)

            let second = try addPeer(dir, "two.key", ["role": "client"])
            let added = try #require(list.reloadIfChanged())
            #expect(added.added.map(\.publicKey) == [second])
            #expect(added.removed.isEmpty && added.changed.isEmpty)
            #expect(list.entry(for: second) != nil)
            #expect(list.generation == 2)
            #expect(list.reloadIfChanged() == nil)

            try FileManager.default.removeItem(atPath: dir + "/one.key")
            let removed = try #require(list.reloadIfChanged())
            #expect(removed.removed.map(\.publicKey) == [first])
            #expect(list.entry(for: first) == nil)
            #expect(list.generation == 3)

            // reload() always re-reads; with nothing changed it changes nothing.
            let same = list.reload()
            #expect(!same.hasChanges)
            #expect(list.generation == 3)
        }
    }

    @Test func sameSizeRewriteWithOldMtimeIsNoticed() throws {
        try withTemporaryDirectory { dir in
            let key = try addPeer(dir, "w.key", ["role": "worker", "weight": "4"])
            let path = dir + "/w.key"
            let list = try Allowlist(directory: dir, logger: CapturedLogs().logger)
            #expect(list.entry(for: key)?.weight == 4)

            var before = stat()
            #expect(stat(path, &before) == 0)
            let text = try readFile(path)
            let rewritten = text.replacingOccurrences(of: "weight = \"4\"", with: "weight = \"5\"")
            #expect(rewritten != text && rewritten.utf8.count == text.utf8.count)
            try Data(rewritten.utf8).write(to: URL(fileURLWithPath: path))
            var times = [before.st_atim, before.st_mtim]
            #expect(utimensat(AT_FDCWD, path, &times, 0) == 0)
            var after = stat()
            #expect(stat(path, &after) == 0)
            #expect(after.st_size == before.st_size)
            #expect(after.st_mtim.tv_sec == before.st_mtim.tv_sec && after.st_mtim.tv_nsec == before.st_mtim.tv_nsec)

            let report = try #require(list.reloadIfChanged())
            #expect(report.changed.map(\.weight) == [5])
            #expect(list.entry(for: key)?.weight == 5)
        }
    }

    @Test func aDirectoryWithNoValidKeyAdmitsNoOne() throws {
        try withTemporaryDirectory { dir in
            let logs = CapturedLogs()
            let key = try addPeer(dir, "w.key")
            let list = try Allowlist(directory: dir, logger: logs.logger)
            #expect(list.failure == nil)
            try writeFile(dir + "/w.key", "garbage without structure =\n")

            let report = try #require(list.reloadIfChanged())
            #expect(report.admitsNoOne && report.entryCount == 0)
            #expect(report.removed.map(\.publicKey) == [key])
            #expect(report.failure?.code == .nothingLoaded)
            #expect(report.failure?.path == dir)
            #expect(report.problems.contains { $0.code == .syntax && $0.path == dir + "/w.key" })
            #expect(list.entry(for: key) == nil)
            #expect(list.entries.isEmpty)
            #expect(list.generation == 2)
            #expect(list.failure?.code == .nothingLoaded)
            let loud = logs.records.filter { $0.level == .error && $0.message == "the allowlist admits no one" }
            #expect(loud.count == 1)
            #expect(loud.first?.metadata["directory"] == dir)
            #expect(loud.first?.metadata["reason"]?.contains("no valid public certificate") == true)
            // The same broken content is not reported again on every poll.
            #expect(list.reloadIfChanged() == nil)
            #expect(logs.records.filter { $0.level >= .warning }.count == 2)

            // Fixing it is picked up.
            let fixed = try addPeer(dir, "x.key")
            let recovered = try #require(list.reloadIfChanged())
            #expect(recovered.added.map(\.publicKey) == [fixed])
            #expect(recovered.failure == nil && !recovered.admitsNoOne)
            #expect(list.failure == nil)
        }
    }

    @Test func aREADMEAloneAdmitsNoOne() throws {
        // The issue's case: the last key removed while a README sits in the directory.
        try withTemporaryDirectory { dir in
            let key = try addPeer(dir, "w.key")
            try writeFile(dir + "/README", "Public certificates of the peers we let in.\n")
            let list = try Allowlist(directory: dir, logger: CapturedLogs().logger)
            #expect(list.entry(for: key) != nil)
            // An extension-less name is read as a CZMQ certificate: README does not parse.
            #expect(list.problems.map(\.path) == [dir + "/README"])
            #expect(list.problems.first?.code == .syntax)

            try FileManager.default.removeItem(atPath: dir + "/w.key")
            let report = try #require(list.reloadIfChanged())
            #expect(report.removed.map(\.publicKey) == [key])
            #expect(report.failure?.code == .nothingLoaded)
            #expect(list.entries.isEmpty)
        }
    }

    @Test func anUnreadableDirectoryAdmitsNoOne() throws {
        try withTemporaryDirectory { parent in
            let dir = parent + "/allowed"
            try makeDirectory(dir)
            let key = try addPeer(dir, "w.key")
            let logs = CapturedLogs()
            let list = try Allowlist(directory: dir, logger: logs.logger)
            try FileManager.default.removeItem(atPath: dir)

            let report = list.reload()
            #expect(report.admitsNoOne)
            #expect(report.removed.map(\.publicKey) == [key])
            #expect(report.failure?.code == .notFound)
            #expect(list.entry(for: key) == nil)
            #expect(list.generation == 2)
            #expect(logs.records.contains { $0.level == .error && $0.message == "the allowlist admits no one" && $0.metadata["reason"] == "does not exist" })
            #expect(list.reloadIfChanged() == nil)

            // A path that is not a directory (chmod 000 does not stop root): also nobody.
            try writeFile(dir, "not a directory")
            let file = try #require(list.reloadIfChanged())
            #expect(file.failure?.code == .io)
            #expect(file.failure?.message.contains("is not a directory") == true)
            #expect(list.entries.isEmpty)

            // The directory back, with the key: admitted again.
            try FileManager.default.removeItem(atPath: dir)
            try makeDirectory(dir)
            try Certificate(publicKey: key).save(directory: dir, name: "w")
            let back = try #require(list.reloadIfChanged())
            #expect(back.added.map(\.publicKey) == [key])
            #expect(list.failure == nil)
        }
    }

    /// pyzmq's layout (`w.key`) and CZMQ's (`w`): adding a suffix disables the file.
    @Test(arguments: [("w.key", "w.key.revoked"), ("w.key", "w.key~"), ("w.key", "w.key.bak"), ("w", "w.revoked"), ("w", "w~"), ("w", "#w#")])
    func renamingAKeyFileRevokesIt(_ name: String, _ renamed: String) throws {
        try withTemporaryDirectory { dir in
            let logs = CapturedLogs()
            let keep = try addPeer(dir, "other.key")
            let key = KeyPair.generate().publicKey
            try writeFile(dir + "/" + name, publicFileText(key, metadataLines: ["    role = \"worker\""]))
            let list = try Allowlist(directory: dir, logger: logs.logger)
            #expect(list.entry(for: key)?.role == .worker)
            #expect(list.skipped.isEmpty)

            #expect(rename(dir + "/" + name, dir + "/" + renamed) == 0)
            let report = try #require(list.reloadIfChanged())
            #expect(report.removed.map(\.publicKey) == [key])
            #expect(report.skipped.map(\.path) == [dir + "/" + renamed])
            #expect(report.skipped.first?.code == .notACertificate)
            #expect(report.problems.isEmpty)
            #expect(list.entry(for: key) == nil)
            #expect(list.entry(for: keep) != nil)
            #expect(list.skipped.map(\.path) == [dir + "/" + renamed])

            // Logged once, by the reload that saw it; not again on every poll.
            #expect(list.reloadIfChanged() == nil)
            let notes = logs.records.filter { $0.message == "skipping an allowlist entry that is not a certificate" }
            #expect(notes.count == 1)
            #expect(notes.first?.metadata["file"] == dir + "/" + renamed)
        }
    }

    @Test func namesThatAreNotCertificatesAreSkippedAndListed() throws {
        try withTemporaryDirectory { dir in
            let key = try addPeer(dir, "w.key")
            let czmq = KeyPair.generate().publicKey
            try writeFile(dir + "/czmq-peer_1", publicFileText(czmq))
            for name in ["w.key~", "README.md", "x.bak", "#x#", "notes.txt"] {
                try writeFile(dir + "/" + name, publicFileText(KeyPair.generate().publicKey))
            }
            try writeFile(dir + "/.swap", "ignored")
            try FileManager.default.createDirectory(atPath: dir + "/archive", withIntermediateDirectories: false)
            let list = try Allowlist(directory: dir, logger: CapturedLogs().logger)
            #expect(Set(list.entries.map(\.publicKey)) == [key, czmq])
            #expect(list.problems.isEmpty)
            let skipped = Dictionary(uniqueKeysWithValues: list.skipped.map { ($0.path.dropFirst(dir.count + 1), $0) })
            #expect(Set(skipped.keys) == ["w.key~", "README.md", "x.bak", "#x#", "notes.txt", "archive"])
            #expect(skipped["archive"]?.message.contains("is a directory") == true)
            #expect(skipped["w.key~"]?.message.contains("not a certificate name") == true)
        }
    }

    @Test(arguments: [("w.key", true), ("w", true), ("worker-1_b+c", true), ("a.b.key", true), ("w.key.revoked", false),
                      ("w.key~", false), ("w~", false), ("#w#", false), ("README.md", false), (".key", false), ("-w", false),
                      ("w.key_secret", false), ("w_secret", false), (".w.key", false), ("", false), ("w x", false)])
    func certificateFileNameRule(_ name: String, _ isCertificate: Bool) {
        #expect(Allowlist.isCertificateFileName(name) == isCertificate)
    }

    @Test func symbolicLinksAreRefused() throws {
        try withTemporaryDirectory { parent in
            let dir = parent + "/allowed"
            try makeDirectory(dir)
            let good = try addPeer(dir, "good.key")
            let linked = try addPeer(parent, "elsewhere.key")
            try FileManager.default.createSymbolicLink(atPath: dir + "/linked.key", withDestinationPath: parent + "/elsewhere.key")
            let logs = CapturedLogs()
            let list = try Allowlist(directory: dir, logger: logs.logger)
            #expect(list.entries.map(\.publicKey) == [good])
            #expect(list.entry(for: linked) == nil)
            let problem = try #require(list.problems.first)
            #expect(list.problems.count == 1)
            #expect(problem.code == .symbolicLink)
            #expect(problem.path == dir + "/linked.key")
            #expect(problem.message.contains("is a symbolic link"))
            #expect(logs.records.contains { $0.level == .warning && $0.metadata["file"] == dir + "/linked.key" && $0.metadata["reason"]?.contains("is a symbolic link") == true })
        }
    }

    @Test(arguments: [(mode_t(0o664), "its group"), (0o646, "other users"), (0o666, "its group and other users")])
    func writableByOthersIsRefused(_ mode: mode_t, _ who: String) throws {
        try withTemporaryDirectory { dir in
            let good = try addPeer(dir, "good.key")
            let loose = try addPeer(dir, "loose.key")
            #expect(chmod(dir + "/loose.key", mode) == 0)
            let list = try Allowlist(directory: dir, logger: CapturedLogs().logger)
            #expect(list.entries.map(\.publicKey) == [good])
            #expect(list.entry(for: loose) == nil)
            let problem = try #require(list.problems.first)
            #expect(problem.code == .insecurePermissions)
            #expect(problem.message.contains("writable by \(who)"))
            #expect(problem.message.contains("chmod go-w \(dir)/loose.key"))

            // Fixing the mode is noticed (no content changed) and lets it in.
            #expect(chmod(dir + "/loose.key", 0o644) == 0)
            let report = try #require(list.reloadIfChanged())
            #expect(report.added.map(\.publicKey) == [loose])
        }
    }

    @Test func aWritableDirectoryIsRefusedAndAdmitsNoOne() throws {
        try withTemporaryDirectory { parent in
            let dir = parent + "/allowed"
            try makeDirectory(dir)
            #expect(chmod(dir, 0o755) == 0)
            let key = try addPeer(dir, "w.key")
            let list = try Allowlist(directory: dir, logger: CapturedLogs().logger)
            #expect(list.entry(for: key) != nil)

            #expect(chmod(dir, 0o775) == 0)
            let report = try #require(list.reloadIfChanged())
            #expect(report.failure?.code == .insecurePermissions)
            #expect(report.failure?.message.contains("allowlist directory is writable by its group") == true)
            #expect(report.removed.map(\.publicKey) == [key])
            #expect(list.entries.isEmpty)

            // At start-up it is an error the CLI reports.
            let error = try #require(throws: CertificateError.self) { _ = try Allowlist(directory: dir) }
            #expect(error.code == .insecurePermissions)
        }
    }

    @Test(.enabled(if: geteuid() == 0, "only root can give a file to another user"))
    func aFileOwnedByAnotherUserIsRefused() throws {
        try withTemporaryDirectory { dir in
            let good = try addPeer(dir, "good.key")
            try addPeer(dir, "theirs.key")
            #expect(chown(dir + "/theirs.key", 4242, 4242) == 0)
            let list = try Allowlist(directory: dir, logger: CapturedLogs().logger)
            #expect(list.entries.map(\.publicKey) == [good])
            let problem = try #require(list.problems.first)
            #expect(problem.code == .untrustedOwner)
            #expect(problem.message.contains("uid 4242"))
        }
    }

    @Test(arguments: [("U+202E", "a\u{202E}b"), ("U+85", "a\u{85}b"), ("U+200B", "a\u{200B}b"), ("U+2028", "a\u{2028}b")])
    func aNameWithControlsOrBidiOverridesIsRefusedWithItsLine(_ shown: String, _ value: String) throws {
        try withTemporaryDirectory { dir in
            let key = KeyPair.generate().publicKey
            try writeFile(dir + "/evil.key", publicFileText(key, metadataLines: ["    name = \"\(value)\""]))
            let good = try addPeer(dir, "good.key")
            let logs = CapturedLogs()
            let list = try Allowlist(directory: dir, logger: logs.logger)
            #expect(list.entries.map(\.publicKey) == [good])
            let problem = try #require(list.problems.first)
            #expect(problem.code == .invalidMetadata)
            #expect(problem.line == 2)
            #expect(problem.message.contains(shown))
            #expect(problem.message.contains("printable"))
            // Nothing raw reaches a log line.
            for record in logs.records {
                for text in [record.message] + Array(record.metadata.values) {
                    #expect(!text.unicodeScalars.contains { $0.value == 0x202E || $0.value == 0x85 || $0.value == 0x200B || $0.value == 0x2028 })
                }
            }
        }
    }

    @Test func anEscInANameIsRefusedWithItsLine() throws {
        try withTemporaryDirectory { dir in
            try writeFile(dir + "/evil.key", publicFileText(KeyPair.generate().publicKey, metadataLines: ["    name = \"\u{1B}[2Jgone\""]))
            let list = try Allowlist(directory: dir, logger: CapturedLogs().logger)
            let problem = try #require(list.problems.first { $0.path == dir + "/evil.key" })
            #expect(problem.line == 2)
            #expect(problem.message.contains("control character byte 0x1B"))
        }
    }

    @Test func fileNamesInLogsAndProblemsAreEscaped() throws {
        try withTemporaryDirectory { dir in
            let name = "evil\nforged line \u{1B}[31m.key"
            try writeFile(dir + "/" + name, "not a certificate\n")
            let logs = CapturedLogs()
            let list = try Allowlist(directory: dir, logger: logs.logger)
            let problem = try #require(list.problems.first { $0.code == .syntax })
            #expect(problem.path == dir + "/" + name)
            #expect(problem.description.contains("evil\\nforged line \\u{1B}[31m.key"))
            #expect(!problem.description.contains("\n") && !problem.description.contains("\u{1B}"))
            let record = try #require(logs.records.first { $0.level == .warning })
            #expect(record.metadata["file"] == dir + "/evil\\nforged line \\u{1B}[31m.key")
        }
    }

    @Test func anEmptiedDirectoryRevokesEveryone() throws {
        try withTemporaryDirectory { dir in
            let key = try addPeer(dir, "w.key")
            let list = try Allowlist(directory: dir, logger: CapturedLogs().logger)
            try FileManager.default.removeItem(atPath: dir + "/w.key")
            let report = try #require(list.reloadIfChanged())
            #expect(report.removed.map(\.publicKey) == [key])
            #expect(report.failure?.message.contains("it is empty") == true)
            #expect(list.entries.isEmpty)
        }
    }

    @Test func initThrowsOnlyForAMissingDirectory() throws {
        try withTemporaryDirectory { dir in
            let error = try #require(throws: CertificateError.self) {
                _ = try Allowlist(directory: dir + "/missing", logger: CapturedLogs().logger)
            }
            #expect(error.code == .notFound)
            // A directory of nothing but bad files loads (empty) and reports.
            try writeFile(dir + "/bad.key", "nonsense =\n")
            let list = try Allowlist(directory: dir)
            #expect(list.entries.isEmpty)
            #expect(list.problems.contains { $0.code == .nothingLoaded })
            #expect(list.failure?.code == .nothingLoaded)
        }
    }

    @Test func inMemoryEntries() throws {
        let a = try AllowlistEntry(certificate: Certificate(publicKey: KeyPair.generate().publicKey, metadata: ["role": "both"]))
        let b = try AllowlistEntry(certificate: Certificate(publicKey: KeyPair.generate().publicKey))
        let list = Allowlist(entries: [a, b, a])
        #expect(list.entries == [a, b])
        #expect(list.entry(for: a.publicKey)?.role == .both)
        #expect(list.reloadIfChanged() == nil)
        #expect(!list.reload().hasChanges)
    }

    @Test func lookupsDuringReloadsSeeAWholeSet() async throws {
        try await withTemporaryDirectory { dir in
            let keys = try (0..<4).map { try addPeer(dir, "p\($0).key") }
            let list = try Allowlist(directory: dir, logger: CapturedLogs().logger)
            await withTaskGroup(of: Void.self) { group in
                group.addTask {
                    for round in 0..<20 {
                        // Flip between all four keys and none of the first two.
                        if round.isMultiple(of: 2) {
                            try? FileManager.default.removeItem(atPath: dir + "/p0.key")
                            try? FileManager.default.removeItem(atPath: dir + "/p1.key")
                        } else {
                            for index in 0..<2 {
                                _ = try? Certificate(publicKey: keys[index]).save(directory: dir, name: "p\(index)", overwrite: true)
                            }
                        }
                        list.reload()
                    }
                }
                for _ in 0..<2 {
                    group.addTask {
                        for _ in 0..<2000 {
                            let seen = list.entries.map(\.publicKey)
                            #expect(seen == keys || seen == Array(keys[2...]))
                        }
                    }
                }
            }
        }
    }
}
