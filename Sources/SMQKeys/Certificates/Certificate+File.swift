/// Reading and writing certificate files.
extension Certificate {
    /// Loads a certificate file, public or secret.
    ///
    /// A path ending in `_secret` (`X.key_secret` from SecureMQ and pyzmq, `X_secret` from CZMQ)
    /// is a secret file: it must hold `secret-key` as well as `public-key`, the two must belong
    /// together, and the file must not be accessible to its group or others. Any other path is a
    /// public file: it must hold `public-key` and no secret. Metadata comes from the file given
    /// (pyzmq writes none into the public file, which then has none).
    ///
    /// - Parameters:
    ///   - path: the certificate file.
    ///   - allowInsecurePermissions: load a secret file even if group or others can access it.
    /// - Returns: the certificate, with ``format`` telling who wrote it.
    /// - Throws: ``CertificateError`` naming the file and, where one is to blame, the line.
    public static func load(path: String, allowInsecurePermissions: Bool = false) throws(CertificateError) -> Certificate {
        var contents = try FileIO.read(path: path)
        defer { FileIO.wipe(&contents.bytes) }
        let isSecretFile = isSecretPath(path)
        if isSecretFile && !allowInsecurePermissions {
            try checkPrivate(permissions: contents.permissions, path: path)
        }
        return try parse(contents.bytes, path: path, secretFile: isSecretFile)
    }

    /// Checks that a secret file is private to its owner (no permission bits for group or others).
    /// - Throws: ``CertificateError`` `.insecurePermissions` with the `chmod 600` that fixes it.
    public static func checkSecretFilePermissions(path: String) throws(CertificateError) {
        guard let mode = try FileIO.mode(of: path) else {
            throw CertificateError(.notFound, path: path, "does not exist")
        }
        try checkPrivate(permissions: mode & 0o7777, path: path)
    }

    private static func checkPrivate(permissions: UInt32, path: String) throws(CertificateError) {
        guard permissions & 0o077 != 0 else { return }
        let who = switch (permissions & 0o070 != 0, permissions & 0o007 != 0) {
        case (true, true): "its group and other users"
        case (true, false): "its group"
        default: "other users"
        }
        let mode = String(permissions, radix: 8)
        throw CertificateError(
            .insecurePermissions, path: path,
            "secret certificate is accessible to \(who) (mode \(String(repeating: "0", count: max(0, 4 - mode.count)))\(mode)); make it private with: chmod 600 \(path)")
    }

    /// Whether `path` names a secret file: `X.key_secret` (SecureMQ, pyzmq) or `X_secret` (CZMQ).
    public static func isSecretPath(_ path: String) -> Bool {
        let file = path.split(separator: "/", omittingEmptySubsequences: true).last ?? ""
        return file.hasSuffix("_secret")
    }

    /// The secret file that goes with a public one: both conventions append `_secret`.
    public static func secretPath(forPublic path: String) -> String { path + "_secret" }

    /// Parses the bytes of a certificate file.
    static func parse(_ bytes: [UInt8], path: String?, secretFile: Bool) throws(CertificateError) -> Certificate {
        func fail(_ code: CertificateError.Code, _ line: Int?, _ message: String) -> CertificateError {
            CertificateError(code, path: path, line: line, message)
        }
        let document: ZPL.Document
        do {
            document = try ZPL.parse(bytes)
        } catch {
            throw CertificateError(error.code, path: path, line: error.line, error.message)
        }

        var sectionLines: [String: Int] = [:]
        var section: String?
        var metadata = CertificateMetadata()
        var metadataLines: [String: Int] = [:]
        // Where each key's text sits in `bytes`: never copied out, so the caller's wipe of
        // `bytes` is the only copy of a secret key's text to wipe.
        var keyTexts: [String: (range: Range<Int>, line: Int)] = [:]
        for line in document.lines {
            switch line.level {
            case 0:
                if let range = line.valueRange, !range.isEmpty {
                    throw fail(.syntax, line.number, "'\(line.name) = …' at the top level: a certificate has only the sections 'metadata' and 'curve', with their properties indented by 4 spaces")
                }
                guard line.name == "metadata" || line.name == "curve" else {
                    throw fail(.syntax, line.number, "unknown section '\(line.name)': a certificate has only 'metadata' and 'curve'")
                }
                if let first = sectionLines[line.name] {
                    throw fail(.syntax, line.number, "a second '\(line.name)' section (the first is on line \(first))")
                }
                sectionLines[line.name] = line.number
                section = line.name
            case 1:
                guard let range = line.valueRange else {
                    throw fail(.syntax, line.number, "'\(line.name)' has no value: write \(line.name) = \"…\"")
                }
                if section == "metadata" {
                    do {
                        // The name first: a misplaced secret-key line must not become a String.
                        try CertificateMetadata.validate(name: line.name, value: "")
                    } catch {
                        throw fail(error.code, line.number, error.message)
                    }
                    let value = String(decoding: bytes[range], as: UTF8.self)
                    do {
                        try CertificateMetadata.validate(name: line.name, value: value)
                    } catch {
                        throw fail(error.code, line.number, error.message)
                    }
                    if let first = metadataLines[line.name] {
                        throw fail(.invalidMetadata, line.number, "metadata '\(line.name)' appears twice (first on line \(first))")
                    }
                    metadataLines[line.name] = line.number
                    metadata[line.name] = value
                } else {
                    guard line.name == "public-key" || line.name == "secret-key" else {
                        throw fail(.syntax, line.number, "unknown property '\(line.name)' in 'curve': expected public-key or secret-key")
                    }
                    if let first = keyTexts[line.name] {
                        throw fail(.syntax, line.number, "a second \(line.name) (the first is on line \(first.line))")
                    }
                    keyTexts[line.name] = (range, line.number)
                }
            default:
                throw fail(.syntax, line.number, "'\(line.name)' is nested too deep: properties sit one level (4 spaces) under 'metadata' or 'curve'")
            }
        }

        guard let publicText = keyTexts["public-key"] else {
            throw fail(.missingKey, nil, "no public-key in a 'curve' section: not a CURVE certificate")
        }
        let publicKey: PublicKey
        do {
            publicKey = try PublicKey(z85: String(decoding: bytes[publicText.range], as: UTF8.self))
        } catch {
            throw fail(.invalidKey, publicText.line, "public-key: \(keyMessage(error))")
        }

        var secretKey: SecretKey?
        if secretFile {
            guard let secretText = keyTexts["secret-key"] else {
                throw fail(.missingKey, nil, "no secret-key in this secret certificate: load the public file instead, or use the file that holds the secret")
            }
            let secret: SecretKey
            do {
                secret = try SecretKey(z85UTF8: bytes[secretText.range])
            } catch {
                // Z85 messages quote the offending character; none of a secret goes into an error.
                let message = error.code == .badEncoding ? "the secret-key is not valid Z85" : keyMessage(error)
                throw fail(.invalidKey, secretText.line, "secret-key: \(message)")
            }
            let derived: PublicKey
            do {
                derived = try secret.derivePublicKey()
            } catch {
                throw fail(.invalidKey, secretText.line, "secret-key: \(keyMessage(error))")
            }
            guard derived == publicKey else {
                throw fail(.keyMismatch, secretText.line, "the secret-key does not belong to the public-key on line \(publicText.line) (it derives \(derived.fingerprint)…, the file says \(publicKey.fingerprint)…): the file was edited or mixed up; use the original or make a new certificate")
            }
            secretKey = secret
        } else if let secretText = keyTexts["secret-key"] {
            let name = path ?? "FILE"
            throw fail(.unexpectedSecret, secretText.line, "a secret-key in a file named like a public certificate: if it is a secret certificate, rename it to \(secretPath(forPublic: name)) and chmod 600 it; never share it")
        }

        return Certificate(
            publicKey: publicKey, secretKey: secretKey, metadata: metadata,
            format: CertificateFormat.detect(comments: document.comments), path: path)
    }

    private static func keyMessage(_ error: KeyError) -> String {
        error.code == .zeroKey
            ? "the key is all zeros, which is never a real key (CZMQ writes zeros for invalid Z85): make a new certificate"
            : error.message
    }

    /// Writes the certificate: `NAME.key` always, and `NAME.key_secret` (mode 0600) when there is
    /// a secret key. Both files carry the metadata, all values double-quoted, so pyzmq's
    /// `zmq.auth.load_certificate` and CZMQ's `zcert_load` read them back.
    ///
    /// Each file is written to a temporary file and then linked or renamed into place, so readers
    /// never see half a file and, without `overwrite`, an existing file is never replaced (even by
    /// a concurrent writer). If the secret file was written and the public one then cannot be,
    /// the secret file is removed again (without `overwrite`).
    ///
    /// - Parameters:
    ///   - directory: an existing directory.
    ///   - name: the base name, `[A-Za-z0-9._+-]`, without `.key`.
    ///   - overwrite: replace existing files.
    /// - Returns: the paths written.
    /// - Throws: ``CertificateError``: `.alreadyExists`, `.invalidName`, `.invalidMetadata`,
    ///   `.notFound` (directory), `.io`.
    @discardableResult
    public func save(directory: String, name: String, overwrite: Bool = false) throws(CertificateError) -> (publicPath: String, secretPath: String?) {
        try Self.validate(fileName: name)
        try metadata.validate()
        guard let mode = try FileIO.mode(of: directory) else {
            throw CertificateError(.notFound, path: directory, "directory does not exist: create it first (mkdir -p \(directory))")
        }
        guard mode & FileIO.typeMask == FileIO.directoryType else {
            throw CertificateError(.io, path: directory, "is not a directory")
        }
        let base = directory.hasSuffix("/") ? directory : directory + "/"
        let publicPath = base + name + ".key"
        let publicBytes = render(secret: false, name: name)
        guard secretKey != nil else {
            try FileIO.writeAtomically(publicBytes, to: publicPath, permissions: 0o644, overwrite: overwrite)
            return (publicPath, nil)
        }
        let secretPath = Self.secretPath(forPublic: publicPath)
        var secretBytes = render(secret: true, name: name)
        defer { FileIO.wipe(&secretBytes) }
        try FileIO.writeAtomically(secretBytes, to: secretPath, permissions: 0o600, overwrite: overwrite)
        do {
            try FileIO.writeAtomically(publicBytes, to: publicPath, permissions: 0o644, overwrite: overwrite)
        } catch {
            if !overwrite { FileIO.remove(secretPath) }
            throw error
        }
        return (publicPath, secretPath)
    }

    /// The ZPL text of the public (or secret) file.
    func render(secret: Bool, name: String) -> [UInt8] {
        var comments = ["   ****  Generated by SecureMQ  ****"]
        if secret {
            comments += [
                "   ZeroMQ CURVE **Secret** Certificate",
                "   Keep it secret: mode 0600, never commit it, never send it to anyone.",
                "   Its public half, \(name).key, is the file to give to peers.",
            ]
        } else {
            comments += [
                "   ZeroMQ CURVE Public Certificate",
                "   Give this file to the peers that must trust this key: it holds no secret.",
            ]
        }
        let curve = [(name: "public-key", value: publicKey.z85)]
        let text = ZPL.render(comments: comments, sections: [("metadata", metadata.pairs), ("curve", curve)])
        guard secret, let secretKey else { return text }
        // The secret-key line goes last, Z85-encoded straight into a buffer sized for it up front
        // (so it never reallocates and leaves a copy behind); the caller wipes that buffer.
        let opening = Array("    secret-key = \"".utf8)
        var out = [UInt8]()
        out.reserveCapacity(text.count + opening.count + 40 + 2)
        out.append(contentsOf: text)
        out.append(contentsOf: opening)
        secretKey.appendZ85(to: &out)
        out.append(contentsOf: "\"\n".utf8)
        return out
    }

    /// Checks a certificate base name: one path component a person can type.
    /// - Throws: ``CertificateError`` `.invalidName` saying what to change.
    public static func validate(fileName name: String) throws(CertificateError) {
        guard !name.isEmpty else { throw CertificateError(.invalidName, "a certificate name cannot be empty") }
        guard name.utf8.count <= 200 else { throw CertificateError(.invalidName, "certificate name '\(name)' is longer than 200 characters") }
        if let bad = name.unicodeScalars.first(where: { !CertificateMetadata.isNameScalar($0) }) {
            throw CertificateError(.invalidName, "certificate name '\(name)' contains '\(bad)': use letters, digits and . _ + - (it becomes NAME.key and NAME.key_secret)")
        }
        if name.hasPrefix(".") || name.hasPrefix("-") {
            throw CertificateError(.invalidName, "certificate name '\(name)' cannot start with '\(name.first!)'")
        }
        if name.hasSuffix(".key") {
            throw CertificateError(.invalidName, "give the name without .key: '\(name.dropLast(4))' (it becomes \(name) and \(name)_secret)")
        }
        if name.hasSuffix("_secret") {
            throw CertificateError(.invalidName, "certificate name '\(name)' cannot end in _secret: that suffix marks secret files")
        }
    }
}
