import ArgumentParser
import SecureMQ

extension Keygen {
    struct Check: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Validate an allowlist directory: list its entries and every problem.",
            discussion: """
                Reads the directory exactly as the broker does: one line per entry (name, role, \
                weight, key fingerprint, file), one "skipped:" line per file that is not read \
                because its name is not a certificate name (certificates are NAME.key, or NAME \
                with no extension as CZMQ writes them; NAME.key.revoked, NAME.key~ and the like \
                are skipped), and one "problem:" line per file refused (it does not parse, has an \
                invalid role/weight/services or non-printable metadata, repeats a key, is a \
                secret, a symbolic link, writable by group or others, or owned by another user). \
                Exits with status 1 if there is any problem, including a directory that admits \
                no one.

                Example:
                  keygen check certs/allowed
                """
        )

        @Argument(help: "The allowlist directory (public certificate files).")
        var directory: String

        func run() throws {
            let list = try Allowlist(directory: directory)
            let entries = list.entries
            if entries.isEmpty {
                print("no entries in \(PeerText.escaped(directory)): nobody is allowed in")
            } else {
                // Names come from certificate files: escaped, so a file cannot drive the terminal.
                let rows = [["NAME", "ROLE", "WEIGHT", "KEY", "FILE"]] + entries.map { entry in
                    [PeerText.escaped(entry.name), entry.role?.rawValue ?? "-", String(entry.weight), entry.publicKey.fingerprint,
                     PeerText.escaped(entry.path ?? "")]
                }
                let widths = (0..<4).map { column in rows.map { $0[column].count }.max() ?? 0 }
                for row in rows {
                    let padded = (0..<4).map { row[$0] + String(repeating: " ", count: widths[$0] - row[$0].count) }
                    print((padded + [row[4]]).joined(separator: "  "))
                }
            }
            // Not certificates by name (renamed to disable, editors' backups, notes): listed, not errors.
            for skipped in list.skipped { print("skipped: \(skipped)") }
            let problems = list.problems
            for problem in problems { printError("problem: \(problem)") }
            guard problems.isEmpty else {
                throw CLIError("\(problems.count) problem\(problems.count == 1 ? "" : "s") in \(PeerText.escaped(directory)): fix or remove the files listed above")
            }
        }
    }
}
