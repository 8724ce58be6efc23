import Foundation

/// libFuzzer's entry point, one binary for every target: `CLOUDSCAN_FUZZ_TARGET` names the one
/// this process runs (scripts/fuzz sets it). A finding is a crash: a trap in the code under test,
/// a sanitizer report, or a broken property (`Property.fail`), each of which libFuzzer keeps as a
/// reproducer.
@_cdecl("LLVMFuzzerTestOneInput")
public func cloudscanFuzzOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let bytes = data.map { Array(UnsafeBufferPointer(start: $0, count: size)) } ?? []
    FuzzTargets.selected.run(bytes)
    return 0
}

/// The targets by name.
enum FuzzTargets {
    struct Target: Sendable {
        let name: String
        let run: @Sendable ([UInt8]) -> Void
    }

    static let all: [Target] = [
        Target(name: "tar", run: ArchiveTargets.tar),
        Target(name: "zip", run: ArchiveTargets.zip),
        Target(name: "extract", run: ArchiveTargets.extract),
        Target(name: "findings-batch", run: MessageTargets.findingsBatch),
        Target(name: "status-report", run: MessageTargets.statusReport),
        Target(name: "scan-create", run: MessageTargets.scanCreate),
        Target(name: "sarif", run: ScannerOutputTargets.sarif),
        Target(name: "jwt", run: TokenTargets.jwt),
    ]

    static let selected: Target = {
        let name = ProcessInfo.processInfo.environment["CLOUDSCAN_FUZZ_TARGET"] ?? ""
        guard let target = all.first(where: { $0.name == name }) else {
            FileHandle.standardError.write(
                Data("CLOUDSCAN_FUZZ_TARGET must be one of: \(all.map(\.name).joined(separator: ", "))\n".utf8))
            exit(2)
        }
        return target
    }()
}

/// A property of the code under test that an input broke: a crash libFuzzer keeps.
enum Property {
    static func fail(_ message: String) -> Never {
        FileHandle.standardError.write(Data("PROPERTY BROKEN: \(message)\n".utf8))
        abort()
    }

    static func check(_ condition: Bool, _ message: @autoclosure () -> String) {
        if !condition { fail(message()) }
    }
}

/// Runs async code to completion from libFuzzer's synchronous callback.
func blocking<T: Sendable>(_ body: @escaping @Sendable () async -> T) -> T {
    let box = BlockingBox<T>()
    let done = DispatchSemaphore(value: 0)
    Task {
        box.value = await body()
        done.signal()
    }
    done.wait()
    guard let value = box.value else { Property.fail("async body produced nothing") }
    return value
}

/// The result of ``blocking(_:)``: written once by the task, read only after the semaphore.
final class BlockingBox<T>: @unchecked Sendable {
    var value: T?
}
