import CloudScanArchive
import Foundation

#if canImport(Glibc)
    import Glibc
#endif

/// Archives: the tar reader and the zip reader through the extractor, and the extractor on any
/// bytes. After every run, nothing may exist outside the extraction root, and no symbolic link in
/// it may resolve outside it. The root sits 12 directories deep in the sandbox, and every level
/// is checked, so an entry that climbs out (as links nested under links once did, one level per
/// link) is seen.
enum ArchiveTargets {
    static let depth = 12
    /// A sandbox per process: `d0/…/d11/root` is the extraction root.
    static let sandbox: String = {
        let base =
            (FileManager.default.fileExists(atPath: "/dev/shm") ? "/dev/shm" : NSTemporaryDirectory())
            + "/cloudscan-fuzz-\(getpid())"
        try? FileManager.default.removeItem(atPath: base)
        try? FileManager.default.createDirectory(
            atPath: base + "/" + (0..<depth).map { "d\($0)" }.joined(separator: "/"), withIntermediateDirectories: true)
        atexit { try? FileManager.default.removeItem(atPath: ArchiveTargets.sandbox) }
        return base
    }()

    static let limits = ArchiveLimits(
        maximumTotalBytes: 8 << 20, maximumFiles: 2_000, maximumRatio: 100, ratioFloorBytes: 1 << 20)

    /// Bytes made into a tar stream's shape (the ustar magic at 257), so mutations explore headers.
    static func tar(_ bytes: [UInt8]) {
        var input = bytes
        if input.count < 512 { input += [UInt8](repeating: 0, count: 512 - input.count) }
        input.replaceSubrange(257..<262, with: Array("ustar".utf8))
        run(input)
    }

    /// Bytes made into a zip's shape (a local header signature first).
    static func zip(_ bytes: [UInt8]) {
        var input = bytes
        if input.count < 4 { input += [UInt8](repeating: 0, count: 4 - input.count) }
        input.replaceSubrange(0..<4, with: [0x50, 0x4b, 0x03, 0x04])
        run(input)
    }

    /// Any bytes: the extractor decides what they are (tar, tar.gz, zip, or refused).
    static func extract(_ bytes: [UInt8]) { run(bytes) }

    static func run(_ input: [UInt8]) {
        let archive = sandbox + "/input"
        let parent = sandbox + "/" + (0..<depth).map { "d\($0)" }.joined(separator: "/")
        let root = parent + "/root"
        removeTree(root)
        guard FileManager.default.createFile(atPath: archive, contents: Data(input)) else {
            Property.fail("cannot write the input file")
        }
        _ = try? ArchiveExtractor.extract(archive: archive, into: root, limits: limits)
        var level = sandbox
        for index in 0...depth {
            let entries = (try? FileManager.default.contentsOfDirectory(atPath: level)) ?? []
            let expected: Set<String> = index == 0 ? ["input", "d0"] : [index == depth ? "root" : "d\(index)"]
            Property.check(
                Set(entries).isSubset(of: expected), "something was created outside the root, in \(level): \(entries)")
            if index < depth { level += "/d\(index)" }
        }
        checkLinks(root: root)
    }

    /// Every symbolic link under the root resolves (where it resolves at all) inside the root.
    static func checkLinks(root: String) {
        guard
            let realRoot = realpath(root, nil).map({ pointer -> String in
                defer { free(pointer) }
                return String(cString: pointer)
            })
        else { return }
        let enumerator = FileManager.default.enumerator(atPath: root)
        while let relative = enumerator?.nextObject() as? String {
            let path = root + "/" + relative
            var info = stat()
            guard lstat(path, &info) == 0, info.st_mode & S_IFMT == S_IFLNK else { continue }
            guard let resolved = realpath(path, nil) else { continue }  // dangling or a loop
            let text = String(cString: resolved)
            free(resolved)
            Property.check(
                text == realRoot || text.hasPrefix(realRoot + "/"), "link \(relative) resolves outside: \(text)")
        }
    }

    static func removeTree(_ path: String) {
        // Links inside are removed, never followed.
        try? FileManager.default.removeItem(atPath: path)
    }
}
