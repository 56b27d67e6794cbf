import Foundation
import SMQKeys
import Testing

@Suite struct KeygenNewTests {
    @Test func writesBothFilesAndPrintsThePublicKey() throws {
        try withScratchDirectory { keygen, dir in
            let result = try keygen.run("new", "worker-1", "--dir", dir, "--role", "worker", "--weight", "4", "--meta", "note=a#b", "--meta", "services=hash,resize")
            #expect(result.status == 0, "\(result.stderr)")
            #expect(result.stderr.isEmpty)
            #expect(result.stdout.contains("public certificate: \(dir)/worker-1.key\n"))
            #expect(result.stdout.contains("secret certificate: \(dir)/worker-1.key_secret"))
            #expect(try visibleFiles(dir) == ["worker-1.key", "worker-1.key_secret"])
            #expect(try permissions(of: dir + "/worker-1.key_secret") == 0o600)
            #expect(try permissions(of: dir + "/worker-1.key") == 0o644)

            let certificate = try Certificate.load(path: dir + "/worker-1.key_secret")
            #expect(result.stdout.contains("public key: \(certificate.publicKey.z85)\n"))
            #expect(!result.stdout.contains(try #require(certificate.secretKey).z85Text))
            #expect(certificate.metadata.pairs.map { "\($0.name)=\($0.value)" } == ["name=worker-1", "role=worker", "weight=4", "note=a#b", "services=hash,resize"])
            let entry = try AllowlistEntry(certificate: try Certificate.load(path: dir + "/worker-1.key"))
            #expect(entry.role == .worker && entry.weight == 4 && entry.services == ["hash", "resize"])
        }
    }

    @Test func defaultsToTheCurrentDirectory() throws {
        try withScratchDirectory { keygen, dir in
            let result = try keygen.run("new", "broker")
            #expect(result.status == 0, "\(result.stderr)")
            #expect(try visibleFiles(dir) == ["broker.key", "broker.key_secret"])
        }
    }

    @Test func refusesAnExistingNameAndForceReplacesIt() throws {
        try withScratchDirectory { keygen, dir in
            try keygen.run("new", "b")
            let before = try String(contentsOfFile: dir + "/b.key_secret", encoding: .utf8)

            let again = try keygen.run("new", "b")
            #expect(again.status != 0)
            #expect(again.stderr.hasPrefix("Error: "))
            #expect(again.stderr.contains("already exists"))
            #expect(again.stderr.contains("--force"))
            #expect(again.stdout.isEmpty)
            #expect(try String(contentsOfFile: dir + "/b.key_secret", encoding: .utf8) == before)

            let forced = try keygen.run("new", "b", "--force")
            #expect(forced.status == 0, "\(forced.stderr)")
            let after = try String(contentsOfFile: dir + "/b.key_secret", encoding: .utf8)
            #expect(after != before)
            #expect(try permissions(of: dir + "/b.key_secret") == 0o600)
            #expect(try Certificate.load(path: dir + "/b.key").publicKey == Certificate.load(path: dir + "/b.key_secret").publicKey)
        }
    }
}

@Suite struct KeygenInspectTests {
    @Test func showsEverythingButTheSecret() throws {
        try withScratchDirectory { keygen, dir in
            try keygen.run("new", "w", "--role", "worker", "--meta", "note=a#b")
            let certificate = try Certificate.load(path: dir + "/w.key_secret")
            let secretText = try #require(certificate.secretKey).z85Text

            let secret = try keygen.run("inspect", "w.key_secret")
            #expect(secret.status == 0, "\(secret.stderr)")
            #expect(secret.stdout.contains("format:      secureMQ"))
            #expect(secret.stdout.contains("public key:  \(certificate.publicKey.z85)"))
            #expect(secret.stdout.contains("fingerprint: \(certificate.publicKey.fingerprint)"))
            #expect(secret.stdout.contains("secret key:  present (not shown)"))
            #expect(secret.stdout.contains("    note = \"a#b\""))
            #expect(!secret.stdout.contains(secretText) && !secret.stderr.contains(secretText))
            #expect(secret.stderr.isEmpty)

            let pub = try keygen.run("inspect", "w.key")
            #expect(pub.status == 0)
            #expect(pub.stdout.contains("secret key:  none (public certificate)"))
        }
    }

    struct Report: Decodable {
        let file: String
        let format: String
        let publicKey: String
        let fingerprint: String
        let hasSecretKey: Bool
        let metadata: [String: String]
        let warnings: [String]
    }

    @Test func jsonIsMachineReadable() throws {
        try withScratchDirectory { keygen, dir in
            try keygen.run("new", "w", "--role", "client")
            let result = try keygen.run("inspect", "w.key_secret", "--json")
            #expect(result.status == 0, "\(result.stderr)")
            let report = try JSONDecoder().decode(Report.self, from: Data(result.stdout.utf8))
            let certificate = try Certificate.load(path: dir + "/w.key_secret")
            #expect(report.file == "w.key_secret")
            #expect(report.format == "secureMQ")
            #expect(report.publicKey == certificate.publicKey.z85)
            #expect(report.fingerprint == certificate.publicKey.fingerprint)
            #expect(report.hasSecretKey)
            #expect(report.metadata == ["name": "w", "role": "client"])
            #expect(report.warnings.isEmpty)
            #expect(!result.stdout.contains(try #require(certificate.secretKey).z85Text))
        }
    }

    @Test(arguments: ["\u{202E}gnp.exe", "a\u{85}b", "zero\u{200B}width"])
    func refusesNonPrintableMetadataWithTheLine(_ value: String) throws {
        try withScratchDirectory { keygen, dir in
            let key = KeyPair.generate().publicKey
            try "metadata\n    name = \"\(value)\"\ncurve\n    public-key = \"\(key.z85)\"\n"
                .write(toFile: dir + "/evil.key", atomically: true, encoding: .utf8)
            let result = try keygen.run("inspect", "evil.key")
            #expect(result.status == 1)
            #expect(result.stderr.hasPrefix("Error: evil.key:2: the value of 'name' contains U+"), "\(result.stderr)")
            #expect(!result.stderr.unicodeScalars.contains { $0.value == 0x202E || $0.value == 0x85 || $0.value == 0x200B })
            #expect(result.stdout.isEmpty)
        }
    }

    @Test func refusesNewWithNonPrintableMetadata() throws {
        try withScratchDirectory { keygen, dir in
            let result = try keygen.run("new", "w", "--meta", "note=\u{202E}txt")
            #expect(result.status != 0)
            #expect(result.stderr.contains("U+202E"))
            #expect(try visibleFiles(dir).isEmpty)
        }
    }

    @Test func warnsAboutAReadableSecret() throws {
        try withScratchDirectory { keygen, dir in
            try keygen.run("new", "w")
            #expect(chmod(dir + "/w.key_secret", 0o644) == 0)
            let text = try keygen.run("inspect", "w.key_secret")
            #expect(text.status == 0)
            #expect(text.stderr.contains("warning: "))
            #expect(text.stderr.contains("chmod 600 w.key_secret"))
            let json = try keygen.run("inspect", "w.key_secret", "--json")
            let report = try JSONDecoder().decode(Report.self, from: Data(json.stdout.utf8))
            #expect(report.warnings.count == 1)
            #expect(report.warnings.first?.contains("chmod 600") == true)
        }
    }
}

@Suite struct KeygenDeriveTests {
    @Test func derivesFromAFileFromTheOptionAndFromStdin() throws {
        try withScratchDirectory { keygen, dir in
            try keygen.run("new", "b")
            let certificate = try Certificate.load(path: dir + "/b.key_secret")
            let publicText = certificate.publicKey.z85
            let secretText = try #require(certificate.secretKey).z85Text

            let fromFile = try keygen.run("derive", "b.key_secret")
            #expect(fromFile.status == 0, "\(fromFile.stderr)")
            #expect(fromFile.stdout == publicText + "\n")

            let fromOption = try keygen.run("derive", "--secret", secretText)
            #expect(fromOption.stdout == publicText + "\n")

            let fromStdin = try keygen.run("derive", "--secret", "-", stdin: secretText + "\n")
            #expect(fromStdin.status == 0, "\(fromStdin.stderr)")
            #expect(fromStdin.stdout == publicText + "\n")

            let json = try keygen.run("derive", "b.key_secret", "--json")
            let object = try #require(try JSONSerialization.jsonObject(with: Data(json.stdout.utf8)) as? [String: String])
            #expect(object == ["publicKey": publicText, "fingerprint": certificate.publicKey.fingerprint])
        }
    }

    @Test func aSecretStartingWithADashIsNotAnOption() throws {
        // Z85 has '-' in its alphabet: about one key in 85 starts with it.
        // "-=" is the hardest case: ArgumentParser refuses such an argument outright.
        let secret = "-=v7LkbqQ.W=}].}j4sxYoeN$22x>$XCeOZTHBce"
        let publicText = "hm@r5UZ>([>c!8ck8ECyzTtH8RV2erY.0*TyUWGM"
        #expect(try SecretKey(z85: secret).derivePublicKey().z85 == publicText)
        var pair = KeyPair.generate()
        while !pair.secretKey.z85Text.hasPrefix("-") { pair = KeyPair.generate() }
        try withScratchDirectory { keygen, _ in
            for (secret, publicText) in [(secret, publicText), (pair.secretKey.z85Text, pair.publicKey.z85)] {
                for arguments in [["derive", "--secret", secret], ["derive", "--secret=" + secret]] {
                    let result = try keygen.run(arguments)
                    #expect(result.status == 0, "\(arguments): \(result.stderr)")
                    #expect(result.stdout == publicText + "\n")
                }
            }
            // The same holds for --meta: '-' may start a metadata name.
            let meta = try keygen.run("new", "m", "--meta", "-=x=y")
            #expect(meta.status == 0, "\(meta.stderr)")
            #expect(try Certificate.load(path: keygen.directory + "/m.key").metadata["-"] == "x=y")
        }
    }

    @Test func theZMQCurveManPageVector() throws {
        try withScratchDirectory { keygen, _ in
            let result = try keygen.run("derive", "--secret", "D:)Q[IlAW!ahhC2ac:9*A}h:p?([4%wOTJ%JR%cs")
            #expect(result.stdout == "Yne@$w-vo<fVvi]a<NY6T1ed:M$fCG*[IaLV{hID\n")
        }
    }

    @Test func refusesAReadableSecretFileWithTheFix() throws {
        try withScratchDirectory { keygen, dir in
            try keygen.run("new", "b")
            #expect(chmod(dir + "/b.key_secret", 0o640) == 0)
            let result = try keygen.run("derive", "b.key_secret")
            #expect(result.status != 0)
            #expect(result.stderr.hasPrefix("Error: "))
            #expect(result.stderr.contains("chmod 600 b.key_secret"))
            #expect(result.stdout.isEmpty)
        }
    }

    @Test func neverEchoesAnInvalidSecret() throws {
        try withScratchDirectory { keygen, _ in
            let bad = "~~~~~" + String(repeating: "a", count: 35)
            let result = try keygen.run("derive", "--secret", bad)
            #expect(result.status != 0)
            #expect(result.stderr.hasPrefix("Error: "))
            #expect(!result.stderr.contains("~") && !result.stderr.contains("aaaa"))
        }
    }
}

@Suite struct KeygenCheckTests {
    @Test func listsEveryEntryOfAGoodDirectory() throws {
        try withScratchDirectory { keygen, dir in
            try keygen.run("new", "worker-1", "--role", "worker", "--weight", "4")
            try keygen.run("new", "client-1", "--role", "client")
            try FileManager.default.createDirectory(atPath: dir + "/allowed", withIntermediateDirectories: false)
            for name in ["worker-1", "client-1"] {
                try FileManager.default.copyItem(atPath: "\(dir)/\(name).key", toPath: "\(dir)/allowed/\(name).key")
            }
            let worker = try Certificate.load(path: dir + "/worker-1.key").publicKey

            let result = try keygen.run("check", "allowed")
            #expect(result.status == 0, "\(result.stderr)")
            #expect(result.stderr.isEmpty)
            let lines = result.stdout.split(separator: "\n").map { $0.split(separator: " ", omittingEmptySubsequences: true).map(String.init) }
            #expect(lines.count == 3)
            #expect(lines.first == ["NAME", "ROLE", "WEIGHT", "KEY", "FILE"])
            #expect(lines.contains(["worker-1", "worker", "4", worker.fingerprint, "allowed/worker-1.key"]))
            #expect(lines.contains { $0.first == "client-1" && $0[1] == "client" && $0[2] == "1" })
        }
    }

    @Test func reportsEveryProblemAndFails() throws {
        try withScratchDirectory { keygen, dir in
            try keygen.run("new", "w", "--role", "worker")
            try "metadata\n    role = \"admin\"\ncurve\n    public-key = \"\(try Certificate.load(path: dir + "/w.key").publicKey.z85)x\"\n"
                .write(toFile: dir + "/broken.key", atomically: true, encoding: .utf8)

            let result = try keygen.run("check", ".")
            #expect(result.status == 1)
            #expect(result.stdout.contains("w.key"))
            let problems = result.stderr.split(separator: "\n").filter { $0.hasPrefix("problem: ") }
            #expect(problems.count == 2)
            #expect(problems.contains { $0.contains("./broken.key:4:") && $0.contains("40 characters") })
            #expect(problems.contains { $0.contains("./w.key_secret") && $0.contains("does not belong in an allowlist") })
            #expect(result.stderr.contains("Error: 2 problems in ."))
        }
    }

    @Test func listsRenamedFilesAsSkippedAndRefusesLinksLooseModesAndControls() throws {
        try withScratchDirectory { keygen, dir in
            try FileManager.default.createDirectory(atPath: dir + "/allowed", withIntermediateDirectories: false)
            for name in ["good", "revoked", "backup", "linked", "loose"] {
                try keygen.run("new", name, "--role", "worker", "--dir", "allowed")
                try FileManager.default.removeItem(atPath: "\(dir)/allowed/\(name).key_secret")
            }
            let revoked = try Certificate.load(path: dir + "/allowed/revoked.key").publicKey
            #expect(rename(dir + "/allowed/revoked.key", dir + "/allowed/revoked.key.revoked") == 0)
            #expect(rename(dir + "/allowed/backup.key", dir + "/allowed/backup.key~") == 0)
            #expect(rename(dir + "/allowed/linked.key", dir + "/linked.key") == 0)
            try FileManager.default.createSymbolicLink(atPath: dir + "/allowed/linked.key", withDestinationPath: dir + "/linked.key")
            #expect(chmod(dir + "/allowed/loose.key", 0o664) == 0)
            let key = try Certificate.load(path: dir + "/allowed/good.key").publicKey.z85
            try "curve\n    public-key = \"\(key)\"\nmetadata\n    name = \"\u{202E}reversed\"\n"
                .write(toFile: dir + "/allowed/bidi.key", atomically: true, encoding: .utf8)
            try "# not a certificate\n".write(toFile: dir + "/allowed/README.md", atomically: true, encoding: .utf8)

            let result = try keygen.run("check", "allowed")
            #expect(result.status == 1)
            let out = result.stdout.split(separator: "\n").map(String.init)
            // Only the good file is an entry; the renamed ones are listed as skipped, with the reason.
            #expect(out.filter { $0.hasSuffix(".key") || $0.contains(".key~") || $0.contains(".revoked") }
                .filter { !$0.hasPrefix("skipped: ") } == out.filter { $0.hasPrefix("good ") })
            #expect(!result.stdout.contains(revoked.fingerprint))
            for name in ["backup.key~", "revoked.key.revoked", "README.md"] {
                #expect(out.contains { $0.hasPrefix("skipped: allowed/\(name): not a certificate name") }, "\(result.stdout)")
            }
            let problems = result.stderr.split(separator: "\n").filter { $0.hasPrefix("problem: ") }
            #expect(problems.count == 3, "\(result.stderr)")
            #expect(problems.contains { $0.contains("allowed/linked.key: is a symbolic link") })
            #expect(problems.contains { $0.contains("allowed/loose.key: the allowlist file is writable by its group") && $0.contains("chmod go-w allowed/loose.key") })
            #expect(problems.contains { $0.contains("allowed/bidi.key:4:") && $0.contains("U+202E") })
            #expect(!result.stdout.unicodeScalars.contains("\u{202E}") && !result.stderr.unicodeScalars.contains("\u{202E}"))
            #expect(result.stderr.contains("Error: 3 problems in allowed"))
        }
    }

    @Test func aDirectoryWithNoValidKeyFails() throws {
        try withScratchDirectory { keygen, dir in
            try FileManager.default.createDirectory(atPath: dir + "/allowed", withIntermediateDirectories: false)
            try "notes\n".write(toFile: dir + "/allowed/w.key.revoked", atomically: true, encoding: .utf8)
            let result = try keygen.run("check", "allowed")
            #expect(result.status == 1)
            #expect(result.stdout.contains("no entries in allowed: nobody is allowed in"))
            #expect(result.stdout.contains("skipped: allowed/w.key.revoked"))
            #expect(result.stderr.contains("problem: allowed: yields no valid public certificate"))
        }
    }

    @Test func aGroupWritableDirectoryIsAnError() throws {
        try withScratchDirectory { keygen, dir in
            try FileManager.default.createDirectory(atPath: dir + "/allowed", withIntermediateDirectories: false)
            #expect(chmod(dir + "/allowed", 0o777) == 0)
            let result = try keygen.run("check", "allowed")
            #expect(result.status == 1)
            #expect(result.stderr.hasPrefix("Error: allowed: the allowlist directory is writable by its group and other users"), "\(result.stderr)")
        }
    }

    @Test func aMissingDirectoryIsAnError() throws {
        try withScratchDirectory { keygen, _ in
            let result = try keygen.run("check", "nowhere")
            #expect(result.status != 0)
            #expect(result.stderr == "Error: nowhere: does not exist\n")
        }
    }
}

@Suite struct KeygenUsageTests {
    @Test(arguments: [
        ["new", "x", "--weight", "0"],
        ["new", "x", "--weight", "1001"],
        ["new", "x", "--weight", "abc"],
        ["new", "x", "--role", "admin"],
        ["new", "x", "--meta", "novalue"],
        ["new", "x", "--meta", "=value"],
        ["new", "x", "--meta", "bad name=v"],
        ["new", "x", "--meta", "q=say \"hi\""],
        ["new", "x", "--meta", "weight=0"],
        ["new", "x", "--meta", "role=x"],
        ["new", "x", "--role", "client", "--meta", "role=worker"],
        ["new", "../x"],
        ["new", "x.key"],
        ["new", "x", "--dir", "missing-dir"],
        ["new"],
        ["inspect", "missing.key"],
        ["inspect"],
        ["derive"],
        ["derive", "a.key_secret", "--secret", "x"],
        ["derive", "x.key"],
        ["check"],
        ["frobnicate"],
    ])
    func mistakesPrintAnErrorAndFail(_ arguments: [String]) throws {
        try withScratchDirectory { keygen, dir in
            let result = try keygen.run(arguments)
            #expect(result.status != 0)
            #expect(result.stderr.hasPrefix("Error: "), "\(result.stderr)")
            #expect(!result.stderr.contains("Fatal error") && !result.stderr.contains("Stack dump"))
            #expect(try visibleFiles(dir).isEmpty)
        }
    }

    @Test(arguments: ["new", "inspect", "derive", "check"])
    func everySubcommandExplainsItself(_ subcommand: String) throws {
        try withScratchDirectory { keygen, _ in
            let result = try keygen.run(subcommand, "--help")
            #expect(result.status == 0)
            #expect(result.stdout.contains("OVERVIEW: "))
            #expect(result.stdout.contains("USAGE: keygen \(subcommand)"))
            #expect(result.stdout.contains("Example"))
        }
    }

    @Test func rootHelpListsTheSubcommands() throws {
        try withScratchDirectory { keygen, _ in
            let result = try keygen.run("--help")
            #expect(result.status == 0)
            for subcommand in ["new", "inspect", "derive", "check"] {
                #expect(result.stdout.contains("  \(subcommand) "))
            }
        }
    }
}
