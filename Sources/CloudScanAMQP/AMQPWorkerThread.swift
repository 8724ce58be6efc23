internal import CRabbitMQ
import Foundation
import Glibc
import Synchronization

/// A dedicated thread that owns one ``AMQPSession``: async callers hand it commands through a
/// mutex-guarded queue and wake it with an eventfd; it sleeps in poll(2) on the socket and the
/// eventfd, so a command is handled at once and heartbeats keep flowing while it waits.
final class AMQPWorkerThread<Command: Sendable>: Sendable {
    private struct Queue {
        var commands: [Command] = []
        var stopped = false
    }
    private let queue = Mutex(Queue())
    /// The eventfd; closed in deinit.
    let wakeDescriptor: Int32

    init() {
        wakeDescriptor = cloudscan_eventfd()
        precondition(wakeDescriptor >= 0, "eventfd failed")
    }

    deinit { close(wakeDescriptor) }

    /// Starts the thread running `body`.
    func start(name: String, _ body: @escaping @Sendable () -> Void) {
        let thread = Thread(block: body)
        thread.name = name
        thread.start()
    }

    /// Queues a command for the thread; false (and nothing queued) once the thread has stopped.
    func submit(_ command: Command) -> Bool {
        // Only the command that makes the queue non-empty needs to wake the thread: the thread
        // takes the whole queue at once, so later ones ride on the same wake-up.
        let (accepted, needsWake) = queue.withLock { queue -> (Bool, Bool) in
            guard !queue.stopped else { return (false, false) }
            queue.commands.append(command)
            return (true, queue.commands.count == 1)
        }
        if needsWake { wake() }
        return accepted
    }

    func wake() {
        var one: UInt64 = 1
        _ = write(wakeDescriptor, &one, 8)
    }

    /// Takes every queued command.
    func drain() -> [Command] {
        queue.withLock { queue in
            let taken = queue.commands
            queue.commands.removeAll(keepingCapacity: true)
            return taken
        }
    }

    var isStopped: Bool { queue.withLock { $0.stopped } }

    /// Refuses further commands and returns the ones still queued (for the caller to fail).
    func stop() -> [Command] {
        queue.withLock { queue in
            queue.stopped = true
            let left = queue.commands
            queue.commands.removeAll()
            return left
        }
    }

    /// Sleeps until the socket is readable, a command arrives, or `milliseconds` pass.
    func wait(socket: Int32, milliseconds: Int32) {
        var descriptors = [pollfd(fd: wakeDescriptor, events: Int16(POLLIN), revents: 0)]
        if socket >= 0 { descriptors.append(pollfd(fd: socket, events: Int16(POLLIN), revents: 0)) }
        let ready = poll(&descriptors, nfds_t(descriptors.count), milliseconds)
        if ready > 0, descriptors[0].revents & Int16(POLLIN) != 0 {
            var counter: UInt64 = 0
            _ = read(wakeDescriptor, &counter, 8)  // re-arm; the commands are taken by drain()
        }
    }
}

/// Exponential backoff with jitter (each delay is 50–100 % of the capped exponential).
public struct Backoff: Sendable {
    public var initial: Duration
    public var maximum: Duration
    private(set) var attempt = 0

    public init(initial: Duration = .milliseconds(100), maximum: Duration = .seconds(10)) {
        self.initial = initial
        self.maximum = maximum
    }

    mutating func next() -> Duration {
        let cap = min(maximum, initial * (1 << min(attempt, 16)))
        attempt += 1
        let fraction = Double.random(in: 0.5...1.0)
        return cap * fraction
    }

    mutating func reset() { attempt = 0 }
}

extension Duration {
    var milliseconds: Int64 {
        components.seconds * 1000 + components.attoseconds / 1_000_000_000_000_000
    }
}
