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
/// with caps on total size, file count and compression ratio. Symbolic links are created after
/// every file is written, so no write ever goes through one, and each is checked with
/// `realpath` once made.
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
        let compressedSize = Int(try handle.seekToEnd())
        try handle.seek(toOffset: 0)
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        let writer = try TreeWriter(root: root, limits: limits, compressedSize: compressedSize)
        let bytes = [UInt8](head)
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

/// Writes entries under the root, enforcing the caps.
final class TreeWriter {
    let root: String
    let realRoot: String
    let limits: ArchiveLimits
    let compressedSize: Int
    private(set) var summary = ArchiveExtractor.Summary(files: 0, directories: 0, symlinks: 0, bytes: 0)
    private var regularFiles: Set<String> = []
    private var directories: Set<String> = []
    private var pendingSymlinks: [(path: String, target: String)] = []

    init(root: String, limits: ArchiveLimits, compressedSize: Int) throws {
        self.root = root
        self.limits = limits
        self.compressedSize = max(compressedSize, 1)
        guard let real = realpath(root, nil) else { throw ArchiveError(.corrupt, "the extraction root is missing") }
        realRoot = String(cString: real)
        free(real)
    }

    private func countEntry() throws {
        if summary.files + summary.directories + summary.symlinks >= limits.maximumFiles {
            throw ArchiveError(.tooManyFiles, "more than \(limits.maximumFiles) entries")
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

    func directory(_ relative: String) throws {
        try countEntry()
        try makeDirectories(relative)
    }

    private func makeDirectories(_ relative: String) throws {
        var current = ""
        for part in relative.split(separator: "/") {
            current = current.isEmpty ? String(part) : current + "/" + part
            if directories.contains(current) { continue }
            if regularFiles.contains(current) {
                throw ArchiveError(.corrupt, "\(ArchiveExtractor.quoted(current)) is both a file and a directory")
            }
            if mkdir(root + "/" + current, 0o755) != 0 && errno != EEXIST {
                throw ArchiveError(.corrupt, "cannot create \(ArchiveExtractor.quoted(current)): \(errnoText())")
            }
            directories.insert(current)
            summary.directories += 1
        }
    }

    /// Opens a regular file for writing (replacing an earlier entry of the same name).
    func beginFile(_ relative: String, executable: Bool) throws -> Int32 {
        try countEntry()
        if let slash = relative.lastIndex(of: "/") { try makeDirectories(String(relative[..<slash])) }
        if directories.contains(relative) {
            throw ArchiveError(.corrupt, "\(ArchiveExtractor.quoted(relative)) is both a directory and a file")
        }
        let full = root + "/" + relative
        if regularFiles.contains(relative) { unlink(full) }
        let fd = open(full, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, executable ? 0o755 : 0o644)
        guard fd >= 0 else {
            throw ArchiveError(.corrupt, "cannot create \(ArchiveExtractor.quoted(relative)): \(errnoText())")
        }
        regularFiles.insert(relative)
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

    /// A hard link: its target must be a file this archive already wrote; the bytes are copied.
    func hardLink(_ relative: String, target: String) throws {
        guard let targetPath = try? ArchiveExtractor.safeRelativePath(target), regularFiles.contains(targetPath) else {
            throw ArchiveError(
                .linkEscape,
                "hard link \(ArchiveExtractor.quoted(relative)) points at \(ArchiveExtractor.quoted(target)), not a file of this archive"
            )
        }
        let data = try Data(contentsOf: URL(fileURLWithPath: root + "/" + targetPath))
        let fd = try beginFile(relative, executable: false)
        defer { close(fd) }
        try write(fd, [UInt8](data))
    }

    /// A symbolic link: made at the end, once no more files are written.
    func symlink(_ relative: String, target: String) throws {
        try countEntry()
        guard !target.isEmpty, !target.hasPrefix("/"), !target.contains("\0") else {
            throw ArchiveError(
                .linkEscape,
                "symbolic link \(ArchiveExtractor.quoted(relative)) points at \(ArchiveExtractor.quoted(target)), outside the archive"
            )
        }
        // Lexically first: the link's directory joined with the target must stay inside.
        var depth = relative.split(separator: "/").count - 1
        for part in target.split(separator: "/") where part != "." {
            depth += part == ".." ? -1 : 1
            if depth < 0 {
                throw ArchiveError(
                    .linkEscape,
                    "symbolic link \(ArchiveExtractor.quoted(relative)) points at \(ArchiveExtractor.quoted(target)), outside the archive"
                )
            }
        }
        pendingSymlinks.append((relative, target))
        summary.symlinks += 1
    }

    /// Makes the symbolic links and checks where each really resolves (links through links).
    func finish() throws {
        for (relative, target) in pendingSymlinks {
            if let slash = relative.lastIndex(of: "/") { try makeDirectories(String(relative[..<slash])) }
            let full = root + "/" + relative
            if regularFiles.contains(relative) || directories.contains(relative) {
                throw ArchiveError(.corrupt, "\(ArchiveExtractor.quoted(relative)) is both a link and a file")
            }
            guard Glibc.symlink(target, full) == 0 else {
                throw ArchiveError(.corrupt, "cannot create link \(ArchiveExtractor.quoted(relative)): \(errnoText())")
            }
        }
        for (relative, target) in pendingSymlinks {
            let full = root + "/" + relative
            guard let resolved = realpath(full, nil) else { continue }  // dangling: harmless
            let path = String(cString: resolved)
            free(resolved)
            if path != realRoot && !path.hasPrefix(realRoot + "/") {
                for (link, _) in pendingSymlinks { unlink(root + "/" + link) }
                throw ArchiveError(
                    .linkEscape,
                    "symbolic link \(ArchiveExtractor.quoted(relative)) → \(ArchiveExtractor.quoted(target)) resolves outside the archive"
                )
            }
        }
    }
}

func errnoText() -> String { String(cString: strerror(errno)) }
