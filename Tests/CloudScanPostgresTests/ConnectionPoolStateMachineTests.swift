import Testing

@testable import CloudScanPostgres

/// The pool's decisions, without I/O.
@Suite("ConnectionPoolStateMachine")
struct ConnectionPoolStateMachineTests {
    final class FakeConnection {}
    typealias Machine = ConnectionPoolStateMachine<FakeConnection, Int>

    @Test("opens up to the maximum, then parks waiters in order")
    func opensThenWaits() {
        var machine = Machine(maximumConnections: 2)
        let r1 = machine.lease(1)
        #expect(r1 == .open)
        let r2 = machine.lease(2)
        #expect(r2 == .open)
        let r3 = machine.lease(3)
        #expect(r3 == .wait)
        let r4 = machine.lease(4)
        #expect(r4 == .wait)
        #expect(machine.waiters == [3, 4])
        #expect(machine.slotsInUse == 2)
    }

    @Test("a released connection goes to the oldest waiter, else idles and is reused")
    func releaseHandsOver() {
        var machine = Machine(maximumConnections: 1)
        let connection = FakeConnection()
        let r5 = machine.lease(1)
        #expect(r5 == .open)
        let r6 = machine.lease(2)
        #expect(r6 == .wait)
        let r7 = machine.release(connection)
        #expect(r7 == .handOver(connection, to: 2))
        let r8 = machine.release(connection)
        #expect(r8 == .park)
        let r9 = machine.lease(3)
        #expect(r9 == .use(connection))
        #expect(machine.slotsInUse == 1)
    }

    @Test("a freed slot lets the oldest waiter open a connection")
    func freedSlotOpensForWaiter() {
        var machine = Machine(maximumConnections: 1)
        let r10 = machine.lease(1)
        #expect(r10 == .open)
        let r11 = machine.lease(2)
        #expect(r11 == .wait)
        let r12 = machine.slotFreed()
        #expect(r12 == .openFor(2))
        #expect(machine.slotsInUse == 1)
        let r13 = machine.slotFreed()
        #expect(r13 == .none)
        #expect(machine.slotsInUse == 0)
    }

    @Test("a cancelled waiter is removed exactly once")
    func cancelWaiter() {
        var machine = Machine(maximumConnections: 1)
        _ = machine.lease(1)
        _ = machine.lease(2)
        _ = machine.lease(3)
        let r14 = machine.cancelWaiter(2)
        #expect(r14)
        let r15 = machine.cancelWaiter(2)
        #expect(!r15)
        #expect(machine.waiters == [3])
    }

    @Test("shutdown closes idle connections, fails waiters and refuses leases")
    func shutdown() {
        var machine = Machine(maximumConnections: 2)
        let idle = FakeConnection()
        let leased = FakeConnection()
        _ = machine.lease(1)
        _ = machine.lease(2)
        _ = machine.release(idle)
        let r16 = machine.lease(3)
        #expect(r16 == .use(idle))
        _ = machine.release(idle)
        _ = machine.lease(4)  // takes idle again
        let r17 = machine.lease(5)
        #expect(r17 == .wait)
        _ = machine.release(idle)  // handed to 5
        let r18 = machine.lease(6)
        #expect(r18 == .wait)
        let result = machine.shutDown()
        #expect(result.close.isEmpty)
        #expect(result.fail == [6])
        let r19 = machine.lease(7)
        #expect(r19 == .fail)
        let r20 = machine.release(leased)
        #expect(r20 == .close(leased))
        let r21 = machine.release(idle)
        #expect(r21 == .close(idle))
        #expect(machine.slotsInUse == 0)
    }
}
