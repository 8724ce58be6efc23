import Foundation

/// Threads for blocking C calls (libcurl transfers): one per call in flight, up to a bound,
/// reused while there is work and gone after a minute idle. GCD is no place for them: its queues
/// stop adding threads at about one per core, so on 2 cores two stalled requests held up every
/// other request of the process.
final class BlockingExecutor: @unchecked Sendable {
    private let condition = NSCondition()
    private var queue: [@Sendable () -> Void] = []
    private var idle = 0
    private var workers = 0
    let maximumWorkers: Int
    let idleTimeout: TimeInterval

    static let shared = BlockingExecutor(maximumWorkers: 128)

    init(maximumWorkers: Int, idleTimeout: TimeInterval = 60) {
        self.maximumWorkers = maximumWorkers
        self.idleTimeout = idleTimeout
    }

    func submit(_ work: @escaping @Sendable () -> Void) {
        condition.lock()
        queue.append(work)
        if queue.count > idle, workers < maximumWorkers {
            workers += 1
            let thread = Thread { [self] in run() }
            thread.name = "cloudscan-blocking"
            thread.start()
        } else {
            condition.signal()
        }
        condition.unlock()
    }

    private func run() {
        condition.lock()
        while true {
            while queue.isEmpty {
                idle += 1
                let signalled = condition.wait(until: Date().addingTimeInterval(idleTimeout))
                idle -= 1
                if !signalled, queue.isEmpty {
                    workers -= 1
                    condition.unlock()
                    return
                }
            }
            let work = queue.removeFirst()
            condition.unlock()
            work()
            condition.lock()
        }
    }
}
