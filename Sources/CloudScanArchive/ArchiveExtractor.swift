import Foundation

#if canImport(Glibc)
    import Glibc
#endif

/// Why an archive was refused. `reason` is short and machine-readable; `message` says what entry.
public struct ArchiveError: Error, CustomStringConvertible, Sendable, Equatable {
    public enum Reason: String, Sendable {
        /// An entry's path is absolute or climbs out with `..`.
        case pathEscape = "archive_path_escape"
        /// A symbolic or hard link points outside the extraction root.
        case linkEscape = "archive_link_escape"
        /// A device, FIFO or socket entry.
        case specialFile = "archive_special_file"
        /// Over the total size or the file-count cap.
        case tooLarge = "archive_too_large"
        case tooManyFiles = "archive_too_many_files"
        /// Expands far more than data compresses (a zip bomb).
        case compressionRatio = "archive_compression_ratio"
        /// Damaged, truncated or not an archive we read.
        case corrupt = "archive_corrupt"
        case unsupported = "archive_unsupported"
    }

    public var reason: Reason
    public var message: String

    public init(_ reason: Reason, _ message: String) {
        self.reason = reason
        self.message = message
    }

    public var description: String { "\(reason.rawValue): \(message)" }
}

/// Caps on what an archive may expand to.
public struct ArchiveLimits: Sendable {
    public var maximumTotalBytes: Int
    public var maximumFiles: Int
    /// Expanded bytes per compressed byte, checked once more than `ratioFloorBytes` are out.
    public var maximumRatio: Int
    public var ratioFloorBytes: Int

    public init(
        maximumTotalBytes: Int = 1 << 30, maximumFiles: Int = 200_000, maximumRatio: Int = 100,
        ratioFloorBytes: Int = 16 << 20
    ) {
        self.maximumTotalBytes = maximumTotalBytes
        self.maximumFiles = maximumFiles
        self.maximumRatio = maximumRatio
        self.ratioFloorBytes = ratioFloorBytes
    }
}

/// Extracts tar, tar.gz and zip archives into an empty directory, refusing anything that could
/// write or point outside it: absolute paths, `..`, links that resolve outside, device files;
/// with caps on total size, file count and compression ratio.
///
/// Nothing is ever created through a path string. Every entry is made relative to a directory
/// descriptor reached from the root one component at a time with `O_DIRECTORY|O_NOFOLLOW`
/// (`mkdirat`, `openat`, `symlinkat`, `linkat`), so a symbolic link made by an earlier entry is
/// never followed while extracting: an entry "under" a link is refused, whatever the link says.
/// Once every entry is out, each link's target is resolved inside the root (links through links,
/// as the kernel would follow them later) and the archive is refused if one climbs out.
public enum ArchiveExtractor {
    public struct Summary: Sendable, Equatable {
        public var files: Int
        public var directories: Int
        public var symlinks: Int
        public var bytes: Int
    }

    public static func extract(
        archive path: String, into root: String, limits: ArchiveLimits = .init()
    ) throws -> Summary {
        guard let handle = FileHandle(forReadingAtPath: path) else {
            throw ArchiveError(.corrupt, "cannot open the archive")
        }
        defer { try? handle.close() }
        let head = try handle.read(upToCount: 512) ?? Data()
        try handle.seek(toOffset: 0)
        let compressedSize = Int(clamping: try handle.seekToEnd())
        try handle.seek(toOffset: 0)
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        let writer = try TreeWriter(root: root, limits: limits, compressedSize: compressedSize)
        let bytes = [UInt8](head)
        do {
            if bytes.count >= 2, bytes[0] == 0x1f, bytes[1] == 0x8b {
                try TarReader(source: GzipSource(handle: handle), writer: writer).read()
            } else if bytes.count >= 4,
                bytes[0..<4] == [0x50, 0x4b, 0x03, 0x04] || bytes[0..<4] == [0x50, 0x4b, 0x05, 0x06]
            {
                try ZipReader(handle: handle, size: compressedSize, writer: writer).read()
            } else if bytes.count >= 262, String(decoding: bytes[257..<262], as: UTF8.self) == "ustar" {
                try TarReader(source: PlainSource(handle: handle), writer: writer).read()
            } else {
                throw ArchiveError(.unsupported, "not a tar, tar.gz or zip archive")
            }
            try writer.finish()
        } catch {
            // A refused archive leaves no link behind: links are only checked once every entry is
            // out, and one made before the failure may point anywhere.
            writer.removeLinks()
            throw error
        }
        return writer.summary
    }

    /// An entry's path made relative and clean, or an error if it is absolute or climbs out.
    static func safeRelativePath(_ name: String) throws -> String? {
        guard !name.contains("\0") else { throw ArchiveError(.pathEscape, "an entry name holds a NUL byte") }
        guard !name.hasPrefix("/"), !name.hasPrefix("\\"), !(name.count >= 2 && name.dropFirst().first == ":") else {
            throw ArchiveError(.pathEscape, "entry \(quoted(name)) has an absolute path")
        }
        var parts: [Substring] = []
        for part in name.split(whereSeparator: { $0 == "/" || $0 == "\\" }) {
            if part == "." || part.isEmpty { continue }
            if part == ".." { throw ArchiveError(.pathEscape, "entry \(quoted(name)) climbs out with ..") }
            parts.append(part)
        }
        guard !parts.isEmpty else { return nil }
        let path = parts.joined(separator: "/")
        guard path.utf8.count <= 4096 else { throw ArchiveError(.corrupt, "an entry's path is over 4096 bytes") }
        return path
    }

    static func quoted(_ name: String) -> String {
        "\"\(name.prefix(200).replacingOccurrences(of: "\"", with: "\\\""))\""
    }
}

// MARK: - Writing the tree

/// Writes entries under the root through directory descriptors, enforcing the caps.
final class TreeWriter {
    let limits: ArchiveLimits
    let compressedSize: Int
    private(set) var summary = ArchiveExtractor.Summary(files: 0, directories: 0, symlinks: 0, bytes: 0)
    private let rootFD: Int32
    private enum Kind { case file, directory, symlink }
    /// What this archive made at each relative path (directories made implicitly included).
    private var kinds: [String: Kind] = [:]
    private var links: [(path: String, target: String)] = []
    /// Open descriptors of directories under the root, by relative path; trimmed between entries.
    private var directoryFDs: [String: Int32] = [:]

    init(root: String, limits: ArchiveLimits, compressedSize: Int) throws {
        self.limits = limits
        self.compressedSize = max(compressedSize, 1)
        rootFD = open(root, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
        guard rootFD >= 0 else { throw ArchiveError(.corrupt, "the extraction root cannot be opened") }
    }

    deinit {
        for fd in directoryFDs.values { close(fd) }
        close(rootFD)
    }

    private func countEntry() throws {
        if summary.files + summary.directories + summary.symlinks >= limits.maximumFiles {
            throw ArchiveError(.tooManyFiles, "more than \(limits.maximumFiles) entries")
        }
        // Between entries no descriptor is in use: keep the cache small.
        if directoryFDs.count > 64 {
            for fd in directoryFDs.values { close(fd) }
            directoryFDs.removeAll()
        }
    }

    /// Accounts for `count` more expanded bytes, checking the size cap and the ratio.
    func account(_ count: Int) throws {
        summary.bytes += count
        if summary.bytes > limits.maximumTotalBytes {
            throw ArchiveError(.tooLarge, "expands past \(limits.maximumTotalBytes) bytes")
        }
        if summary.bytes > limits.ratioFloorBytes && summary.bytes / compressedSize > limits.maximumRatio {
            throw ArchiveError(
                .compressionRatio,
                "expands more than \(limits.maximumRatio)× its compressed size (\(compressedSize) bytes)")
        }
    }

    /// A clean relative path split into its directory ("" for the root) and its last component.
    private func split(_ relative: String) -> (directory: String, name: String) {
        guard let slash = relative.lastIndex(of: "/") else { return ("", relative) }
        return (String(relative[..<slash]), String(relative[relative.index(after: slash)...]))
    }

    /// The descriptor of a directory under the root, walked one component at a time without
    /// following any link; with `create`, missing directories are made. Owned by the cache.
    private func directoryFD(_ relative: String, create: Bool) throws -> Int32 {
        if relative.isEmpty { return rootFD }
        if let fd = directoryFDs[relative] { return fd }
        var parentFD = rootFD
        var current = ""
        for part in relative.split(separator: "/") {
            current = current.isEmpty ? String(part) : current + "/" + part
            if let cached = directoryFDs[current] {
                parentFD = cached
                continue
            }
            let name = String(part)
            if create && kinds[current] == nil {
                if mkdirat(parentFD, name, 0o755) == 0 {
                    kinds[current] = .directory
                    summary.directories += 1
                } else if errno != EEXIST {
                    throw ArchiveError(.corrupt, "cannot create \(ArchiveExtractor.quoted(current)): \(errnoText())")
                }
            }
            let fd = openat(parentFD, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
            guard fd >= 0 else {
                let failure = errno
                if kinds[current] == .symlink || failure == ELOOP {
                    throw ArchiveError(
                        .linkEscape,
                        "\(ArchiveExtractor.quoted(relative)) passes through the symbolic link \(ArchiveExtractor.quoted(current))"
                    )
                }
                if kinds[current] == .file || failure == ENOTDIR {
                    throw ArchiveError(.corrupt, "\(ArchiveExtractor.quoted(current)) is both a file and a directory")
                }
                throw ArchiveError(.corrupt, "cannot open \(ArchiveExtractor.quoted(current)): \(errnoText())")
            }
            directoryFDs[current] = fd
            parentFD = fd
        }
        return parentFD
    }

    func directory(_ relative: String) throws {
        try countEntry()
        if kinds[relative] == .file || kinds[relative] == .symlink {
            throw ArchiveError(.corrupt, "\(ArchiveExtractor.quoted(relative)) is both a directory and a file or link")
        }
        _ = try directoryFD(relative, create: true)
    }

    /// Makes room for an entry at `relative`: its parent directories exist, and an earlier
    /// regular file of the same name is replaced. Returns the parent's descriptor and the name.
    private func place(_ relative: String, as what: String) throws -> (Int32, String) {
        let (directory, name) = split(relative)
        let parent = try directoryFD(directory, create: true)
        switch kinds[relative] {
        case .directory?:
            throw ArchiveError(.corrupt, "\(ArchiveExtractor.quoted(relative)) is both a directory and \(what)")
        case .symlink?:
            throw ArchiveError(.corrupt, "\(ArchiveExtractor.quoted(relative)) is both a symbolic link and \(what)")
        case .file?:
            _ = unlinkat(parent, name, 0)
            summary.files -= 1
        case nil:
            break
        }
        return (parent, name)
    }

    /// Opens a regular file for writing (replacing an earlier file entry of the same name).
    func beginFile(_ relative: String, executable: Bool) throws -> Int32 {
        try countEntry()
        let (parent, name) = try place(relative, as: "a file")
        let fd = openat(parent, name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, executable ? 0o755 : 0o644)
        guard fd >= 0 else {
            throw ArchiveError(.corrupt, "cannot create \(ArchiveExtractor.quoted(relative)): \(errnoText())")
        }
        kinds[relative] = .file
        summary.files += 1
        return fd
    }

    func write(_ fd: Int32, _ bytes: [UInt8]) throws {
        try account(bytes.count)
        var offset = 0
        while offset < bytes.count {
            let written = bytes[offset...].withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
            if written < 0 {
                if errno == EINTR { continue }
                throw ArchiveError(.corrupt, "write failed: \(errnoText())")
            }
            offset += written
        }
    }

    /// A hard link to a regular file this archive already wrote: `linkat`, no second copy.
    func hardLink(_ relative: String, target: String) throws {
        try countEntry()
        guard let targetPath = try? ArchiveExtractor.safeRelativePath(target), kinds[targetPath] == .file,
            targetPath != relative
        else {
            throw ArchiveError(
                .linkEscape,
                "hard link \(ArchiveExtractor.quoted(relative)) points at \(ArchiveExtractor.quoted(target)), not a file of this archive"
            )
        }
        let (targetDirectory, targetName) = split(targetPath)
        let targetParent = try directoryFD(targetDirectory, create: false)
        let (parent, name) = try place(relative, as: "a hard link")
        guard linkat(targetParent, targetName, parent, name, 0) == 0 else {
            throw ArchiveError(.corrupt, "cannot create \(ArchiveExtractor.quoted(relative)): \(errnoText())")
        }
        kinds[relative] = .file
        summary.files += 1
    }

    /// A symbolic link, made at once: no later entry is ever created through it.
    func symlink(_ relative: String, target: String) throws {
        try countEntry()
        let escape = ArchiveError(
            .linkEscape,
            "symbolic link \(ArchiveExtractor.quoted(relative)) points at \(ArchiveExtractor.quoted(target)), outside the archive"
        )
        guard !target.isEmpty, !target.hasPrefix("/"), !target.contains("\0"), target.utf8.count <= 4096 else {
            throw escape
        }
        // Lexically first: the link's directory joined with the target must stay inside.
        var depth = relative.split(separator: "/").count - 1
        for part in target.split(separator: "/") where part != "." {
            depth += part == ".." ? -1 : 1
            if depth < 0 { throw escape }
        }
        let (parent, name) = try place(relative, as: "a symbolic link")
        guard symlinkat(target, parent, name) == 0 else {
            throw ArchiveError(.corrupt, "cannot create link \(ArchiveExtractor.quoted(relative)): \(errnoText())")
        }
        kinds[relative] = .symlink
        links.append((relative, target))
        summary.symlinks += 1
    }

    /// Removes every symbolic link this archive made (a refused archive's).
    func removeLinks() {
        for (link, _) in links {
            let (directory, name) = split(link)
            if let parent = try? directoryFD(directory, create: false) { _ = unlinkat(parent, name, 0) }
        }
        links.removeAll()
    }

    /// Checks where each link really resolves, following links through links inside the root;
    /// on an escape the archive is refused (and ``removeLinks()`` removes them all).
    func finish() throws {
        for (relative, target) in links {
            switch resolve(relative) {
            case .inside: continue
            case .outside, .loop:
                throw ArchiveError(
                    .linkEscape,
                    "symbolic link \(ArchiveExtractor.quoted(relative)) → \(ArchiveExtractor.quoted(target)) resolves outside the archive"
                )
            }
        }
    }

    enum Resolution { case inside, outside, loop }

    /// Resolves the link at `relative` the way the kernel would, but beneath the root: a `..`
    /// above the root or an absolute target is `outside`. Missing components stay lexical.
    func resolve(_ relative: String) -> Resolution {
        var stack = relative.split(separator: "/").dropLast().map(String.init)
        var pending = [relative.split(separator: "/").last.map(String.init) ?? ""]
        var hops = 0
        while let part = pending.popLast() {
            if part.isEmpty || part == "." { continue }
            if part == ".." {
                if stack.isEmpty { return .outside }
                stack.removeLast()
                continue
            }
            let candidate = (stack + [part]).joined(separator: "/")
            var info = stat()
            guard fstatat(rootFD, candidate, &info, AT_SYMLINK_NOFOLLOW) == 0, info.st_mode & S_IFMT == S_IFLNK else {
                stack.append(part)
                continue
            }
            hops += 1
            if hops > 40 { return .loop }
            var buffer = [CChar](repeating: 0, count: 4097)
            let count = readlinkat(rootFD, candidate, &buffer, 4096)
            guard count > 0, count <= 4096 else { return .outside }
            let target = String(decoding: buffer[0..<count].map { UInt8(bitPattern: $0) }, as: UTF8.self)
            if target.hasPrefix("/") { return .outside }
            pending.append(
                contentsOf: target.split(separator: "/", omittingEmptySubsequences: true).map(String.init).reversed())
        }
        return .inside
    }
}

func errnoText() -> String { String(cString: strerror(errno)) }
