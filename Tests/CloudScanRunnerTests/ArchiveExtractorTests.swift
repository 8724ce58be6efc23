import CloudScanArchive
import CloudScanTestSupport
import Foundation
import Testing

/// Archives written by Python's tarfile/zipfile (Tests/clients/make_archives.py), good and malicious.
@Suite("archive extraction")
struct ArchiveExtractorTests {
    /// The archives, written once per test process (the bombs are 64 MiB each to compress, and
    /// two dozen test cases writing them at once starved every other test of CPU), read-only.
    actor Fixtures {
        static let shared = Fixtures()
        private var made: Task<String, any Error>?

        func directory() async throws -> String {
            if let made { return try await made.value }
            let task = Task<String, any Error> {
                let base = FileManager.default.temporaryDirectory.appendingPathComponent(
                    "archives-\(UUID().uuidString)"
                )
                .path
                let (status, output) = try await runCommandCapturingOutput([
                    "python3",
                    TestDatabase.repositoryRoot.appendingPathComponent("Tests/clients/make_archives.py").path,
                    base,
                ])
                guard status == 0 else { throw CommandFailure(output: output) }
                return base
            }
            made = task
            return try await task.value
        }
    }

    struct CommandFailure: Error, CustomStringConvertible {
        var output: String
        var description: String { "make_archives.py failed: \(output)" }
    }

    /// The shared archives, and a fresh sandbox whose `root/` is the extraction root.
    static func withArchives(_ body: (_ archives: String, _ sandbox: String) throws -> Void) async throws {
        let archives = try await Fixtures.shared.directory()
        let sandbox = FileManager.default.temporaryDirectory.appendingPathComponent("arch-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: sandbox) }
        try FileManager.default.createDirectory(atPath: sandbox, withIntermediateDirectories: true)
        try body(archives, sandbox)
    }

    /// Whether anything (a dangling link too) is at `path`.
    static func exists(_ path: String) -> Bool {
        var info = stat()
        return lstat(path, &info) == 0
    }

    /// Every path under `directory` (relative), following nothing.
    static func tree(_ directory: String) -> Set<String> {
        Set((FileManager.default.enumerator(atPath: directory)?.allObjects as? [String]) ?? [])
    }

    @Test("tar.gz and zip: files, directories, modes, links inside the root, long names")
    func goodArchives() async throws {
        try await Self.withArchives { archives, sandbox in
            let root = sandbox + "/tar"
            let summary = try ArchiveExtractor.extract(archive: archives + "/good.tar.gz", into: root)
            #expect(summary.files == 5)
            #expect(summary.symlinks == 1)
            #expect(try String(contentsOfFile: root + "/src/copy.py", encoding: .utf8) == "print('hello')\n")
            #expect(try FileManager.default.destinationOfSymbolicLink(atPath: root + "/src/link.py") == "app.py")
            // The hard link is a link, not a second copy of the bytes.
            let original = try FileManager.default.attributesOfItem(atPath: root + "/src/app.py")
            let linked = try FileManager.default.attributesOfItem(atPath: root + "/src/copy.py")
            #expect(original[.systemFileNumber] as? Int == linked[.systemFileNumber] as? Int)
            #expect(original[.referenceCount] as? Int == 2)
            #expect(FileManager.default.isExecutableFile(atPath: root + "/src/run.sh"))
            #expect(!FileManager.default.isExecutableFile(atPath: root + "/src/app.py"))
            #expect(
                FileManager.default.fileExists(
                    atPath: root + "/deep/" + String(repeating: "d/", count: 40) + "leaf.txt"))

            let zipRoot = sandbox + "/zip"
            let zip = try ArchiveExtractor.extract(archive: archives + "/good.zip", into: zipRoot)
            #expect(zip.files == 2)
            #expect(
                try String(contentsOfFile: zipRoot + "/src/app.py", encoding: .utf8)
                    == String(repeating: "print('hello')\n", count: 50))
            #expect(try FileManager.default.destinationOfSymbolicLink(atPath: zipRoot + "/src/link.py") == "app.py")
            #expect(FileManager.default.fileExists(atPath: zipRoot + "/src/empty"))

            let longRoot = sandbox + "/long"
            _ = try ArchiveExtractor.extract(archive: archives + "/longname.tar.gz", into: longRoot)
            #expect(
                FileManager.default.fileExists(atPath: longRoot + "/dir/" + String(repeating: "n", count: 150) + ".txt")
            )
        }
    }

    @Test(
        "malicious archives are refused with a clear reason, and nothing lands outside the root",
        arguments: [
            ("zip-slip.zip", ArchiveError.Reason.pathEscape),
            ("absolute.tar.gz", .pathEscape),
            ("dotdot.tar.gz", .pathEscape),
            ("symlink-escape.tar.gz", .linkEscape),
            ("symlink-absolute.tar.gz", .linkEscape),
            ("symlink-chain.tar.gz", .linkEscape),
            ("symlink-then-file.tar.gz", .linkEscape),
            ("hardlink-escape.tar.gz", .linkEscape),
            ("device.tar.gz", .specialFile),
            ("fifo.tar.gz", .specialFile),
            ("zip-bomb.zip", .compressionRatio),
            ("gzip-bomb.tar.gz", .compressionRatio),
            ("not-an-archive.bin", .unsupported),
            ("nested-links.tar", .linkEscape),
            ("link-through-link.tar.gz", .linkEscape),
            ("dir-under-link.tar.gz", .linkEscape),
            ("pax-short.tar", .corrupt),
            ("links-then-corrupt.tar", .corrupt),
            ("combining-slash.tar.gz", .pathEscape),
            ("prepend-slash.tar.gz", .linkEscape),
            ("pax-huge.tar", .corrupt),
            ("pax-signed.tar", .corrupt),
            ("pax-no-newline.tar", .corrupt),
        ])
    func refused(archive: String, reason: ArchiveError.Reason) async throws {
        try await Self.withArchives { archives, sandbox in
            let root = sandbox + "/root"
            do {
                _ = try ArchiveExtractor.extract(archive: archives + "/" + archive, into: root)
                Issue.record("\(archive) was extracted")
            } catch let error as ArchiveError {
                #expect(error.reason == reason, "\(archive): \(error)")
                #expect(!error.message.isEmpty)
            }
            // Only the root itself is in the sandbox; nothing escaped next to it or above it.
            #expect(Self.tree(sandbox).allSatisfy { $0 == "root" || $0.hasPrefix("root/") }, "\(Self.tree(sandbox))")
            for escaped in ["evil-zip-slip.txt", "evil-dotdot.txt", "\u{301}evil-combining.txt", "evil-prepend.txt"] {
                #expect(!FileManager.default.fileExists(atPath: sandbox + "/../" + escaped))
            }
            #expect(!FileManager.default.fileExists(atPath: "/tmp/evil-absolute.txt"))
            #expect(!FileManager.default.fileExists(atPath: "/tmp/evil-through-link.txt"))
            // The nested links' last one, wherever a path-string extraction would have put it.
            var ancestor = sandbox
            while !ancestor.isEmpty {
                #expect(!Self.exists(ancestor + "/cloudscan-escape"), "a link escaped into \(ancestor)")
                ancestor = String(ancestor[..<(ancestor.lastIndex(of: "/") ?? ancestor.startIndex)])
            }
            #expect(!Self.exists("/cloudscan-escape"), "a link escaped to /")
            // No link left behind at all when the archive was refused.
            if let links = try? FileManager.default.subpathsOfDirectory(atPath: root) {
                #expect(
                    links.allSatisfy {
                        (try? FileManager.default.destinationOfSymbolicLink(atPath: root + "/" + $0)) == nil
                    }, "links stayed behind: \(links)")
            }
            // No link left behind that resolves outside.
            for path in Self.tree(root) {
                if let resolved = try? URL(fileURLWithPath: root + "/" + path).resolvingSymlinksInPath().path {
                    let realRoot = URL(fileURLWithPath: root).resolvingSymlinksInPath().path
                    #expect(resolved.hasPrefix(realRoot), "\(path) → \(resolved)")
                }
            }
        }
    }

    @Test("names are bytes: canonically equal names (NFC, NFD) are two directories, and no link between them escapes")
    func canonicallyEqualNames() async throws {
        try await Self.withArchives { archives, sandbox in
            let root = sandbox + "/root"
            _ = try ArchiveExtractor.extract(archive: archives + "/nfc-nfd.tar.gz", into: root)
            let top = Set((try FileManager.default.contentsOfDirectory(atPath: root)).map { Array($0.utf8) })
            #expect(top == [Array("\u{E9}".utf8), Array("e\u{301}".utf8)], "two directories, byte-exact")
            let realRoot = URL(fileURLWithPath: root).resolvingSymlinksInPath().path
            for path in Self.tree(root) {
                let resolved = URL(fileURLWithPath: root + "/" + path).resolvingSymlinksInPath().path
                #expect(resolved.hasPrefix(realRoot), "\(path) → \(resolved)")
            }
        }
    }

    @Test("caps on total size and file count")
    func caps() async throws {
        try await Self.withArchives { archives, sandbox in
            do {
                _ = try ArchiveExtractor.extract(
                    archive: archives + "/many-files.tar.gz", into: sandbox + "/a", limits: .init(maximumFiles: 100))
                Issue.record("300 files passed a cap of 100")
            } catch let error as ArchiveError {
                #expect(error.reason == .tooManyFiles)
            }
            do {
                _ = try ArchiveExtractor.extract(
                    archive: archives + "/good.zip", into: sandbox + "/b", limits: .init(maximumTotalBytes: 100))
                Issue.record("750 bytes passed a cap of 100")
            } catch let error as ArchiveError {
                #expect(error.reason == .tooLarge)
            }
            // Under the caps the same archives extract.
            let summary = try ArchiveExtractor.extract(archive: archives + "/many-files.tar.gz", into: sandbox + "/c")
            #expect(summary.files == 300)
        }
    }
}
