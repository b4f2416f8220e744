/*
 * A small, bounded model of Postbox's delivery protocol between two Postbox
 * servers (PROTOCOL.md §4, ARCHITECTURE.md "Delivery, per peer"), checked
 * exhaustively by spin: every interleaving of the sender's push loop and
 * resume probe, the receiver's pulls, the sender's serving of them, lost
 * requests and replies, a late duplicate of a push, the batching of records
 * nobody waits for, and one crash of either server at any step.
 *
 * Property: no loss, no reorder, no double apply. The receiver applies each
 * of the N events exactly once and in order (asserted at every apply), and
 * when nothing can move any more, every event was applied and the sender
 * counts exactly those as delivered (asserted by the Final process). Spin's
 * own deadlock check covers the two servers pulling each other (LINKS=2).
 *
 * What each piece stands for in the code (adapters/delivery, domain):
 *   head[d]          outbox-<peer>'s length; Send appends before any delivery
 *   del, queue,      domain.Outbox as the engine holds it in memory
 *   pulled              (Delivered, Mode, PulledSinceQueue)
 *   dDel, dQueue,    the same folded from the delivery stream (durable);
 *   dPulled             a record nobody waits for (a push done) is written
 *                       later, in a batch (Flush); the others are waited for
 *   got[d]           domain.Inbox.LastSeq+1 (inbox-<peer>, durable before
 *                       a push or pull is answered)
 *   gate[d]          the receiver's own Pull from the sender is under way:
 *                       its pushes wait for it
 * Link d carries events from server d to server 1-d. LINKS=1 checks one
 * direction; LINKS=2 both at once.
 *
 * Rules that can be broken on purpose, to see spin find the violation:
 *   -DBREAK_SEQCHECK  the receiver applies an event whatever its sequence
 *                     number (domain.Inbox.Accepts always true)
 *   -DBREAK_ACK       a Pull reply counts as delivered once written, even to
 *                     a receiver that acknowledges (PullServed.AwaitsAck
 *                     ignored)
 *   -DBREAK_PULLWAIT  serving a Pull waits for this server's own pushes to
 *                     the caller to finish (LINKS=2: two servers deadlock)
 */

#ifndef N
#define N 3         /* events per link */
#endif
#ifndef X
#define X 1         /* retries: queue mode after one attempt plus X retries failed */
#endif
#ifndef MAXF
#define MAXF 3      /* network faults (lost request, lost reply, duplicate) in a run */
#endif
#ifndef LINKS
#define LINKS 1
#endif

byte head[LINKS];
byte del[LINKS]; bit queue[LINKS]; bit pulled[LINKS];
byte dDel[LINKS]; bit dQueue[LINKS]; bit dPulled[LINKS];
bit dirty[LINKS];                 /* records not yet written */
byte fails[LINKS];                /* failed attempts on the current event */
bit pushing[LINKS];               /* a push of the sender is in flight */
byte got[LINKS];
bit gate[LINKS];
byte dup[LINKS];                  /* a duplicated push still to arrive: seq+1, 0 for none */
byte faults;
bit crashed;
byte inc[2];                      /* each server's incarnation: a crash starts a new one */

#define SENDER(d)   (d)
#define RECEIVER(d) (1 - (d))

/* A waited record: it and everything before it are durable. */
inline flush(d) {
	dDel[d] = del[d]; dQueue[d] = queue[d]; dPulled[d] = pulled[d]; dirty[d] = 0
}

/* The receiver takes the event numbered s (domain.Inbox.Accepts, Received). */
inline accept(d, s) {
#ifdef BREAK_SEQCHECK
	assert(s == got[d]);      /* no reorder, no double apply, no gap */
	got[d]++
#else
	if
	:: s >= got[d] ->
		assert(s == got[d]);  /* a Postbox sender never skips an event */
		got[d]++
	:: else -> skip           /* applied already: a retry or a duplicate */
	fi
#endif
}

/* Enqueue: the application sends the events, at any time. */
proctype Enqueue(byte d) {
end:	do
	:: atomic { head[d] < N -> head[d]++ }
	od
}

/*
 * The sender's push loop and resume probe: one push in flight per peer.
 * In push mode it pushes the oldest undelivered event (domain.Outbox.NextPush);
 * in queue mode, only while the peer has not pulled since, the probe pushes
 * it (NeedsProbe). A crash of the sender ends the push (its reply goes to a
 * dead process); a crash of the receiver loses the reply.
 */
proctype Sender(byte d) {
	byte s; bit probe; bit ok; byte sinc; byte rinc;
end:	do
	:: atomic {
		(del[d] < head[d] && (!queue[d] || !pulled[d])) ->
		s = del[d]; probe = queue[d]; sinc = inc[SENDER(d)]; pushing[d] = 1
	   }
	   /* the request */
	   if
	   :: atomic { faults < MAXF -> faults++; ok = 0 }       /* lost */
	   :: atomic { faults < MAXF && dup[d] == 0 -> faults++; dup[d] = s + 1; ok = 1 }  /* and a copy later */
	   :: ok = 1
	   fi;
	   if
	   :: ok ->
		rinc = inc[RECEIVER(d)];
		/* a push waits for the receiver's own pull from the sender */
		atomic {
			(!gate[d] || rinc != inc[RECEIVER(d)]) ->
			if
			:: rinc == inc[RECEIVER(d)] -> accept(d, s)
			:: else -> ok = 0        /* the receiver crashed first */
			fi
		}
		/* the reply */
		if
		:: atomic { faults < MAXF -> faults++; ok = 0 }
		:: atomic { rinc != inc[RECEIVER(d)] -> ok = 0 }   /* the receiver crashed after applying */
		:: skip
		fi
	   :: else -> skip
	   fi;
	   /* the outcome, decided on the sender's state as it is now */
	   atomic {
		if
		:: sinc != inc[SENDER(d)] -> skip          /* this process died */
		:: else ->
			if
			:: ok && s == del[d] && !queue[d] && !probe ->
				/* PushSucceeded: EventPushed, written later */
				del[d]++; fails[d] = 0; dirty[d] = 1
			:: ok && s == del[d] && queue[d] && probe && !pulled[d] ->
				/* a probe succeeded: PushResumed and EventPushed */
				queue[d] = 0; del[d]++; fails[d] = 0; dirty[d] = 1
			:: !ok && s == del[d] && !queue[d] && !probe ->
				/* PushFailed: queue mode after X retries, waited for */
				fails[d]++;
				if
				:: fails[d] > X -> queue[d] = 1; pulled[d] = 0; fails[d] = 0; flush(d)
				:: else -> skip
				fi
			:: else -> fails[d] = 0     /* stale, or a probe failed: nothing recorded */
			fi
		fi;
		pushing[d] = 0
	   }
	od
}

/* A duplicate of an earlier push reaches the receiver late. */
proctype Duplicate(byte d) {
end:	do
	:: atomic { dup[d] > 0 && !gate[d] -> accept(d, dup[d] - 1); dup[d] = 0 }
	od
}

/* Records nobody waits for are written in a batch, at some point. */
proctype Flush(byte d) {
end:	do
	:: atomic { dirty[d] -> flush(d) }
	od
}

/*
 * The receiver pulls the sender, round after round until a reply is empty,
 * acknowledging what it applied. It pulls whenever that can change
 * anything (in the code it pulls at startup and every minute after a push;
 * a Pull that would find push mode and nothing new to acknowledge changes
 * nothing, so the model leaves it out to stay finite). The sender serves it
 * at once (domain.Outbox.PlanPull), never waiting for its own push.
 */
proctype Puller(byte d) {
	byte from; byte to; byte rinc; byte sinc; bit ok;
end:	do
	:: atomic {
		!gate[d] && (queue[d] || got[d] > del[d]) ->
		gate[d] = 1; rinc = inc[RECEIVER(d)]
	   }
	   do
	   :: /* the request, with the acknowledgement got[d] */
		if
		:: atomic { faults < MAXF -> faults++; ok = 0 }
		:: ok = 1
		fi;
		from = 0; to = 0;
		if
		:: ok ->
#ifdef BREAK_PULLWAIT
			/* wrong: the sender finishes its own push to the caller first */
			!pushing[d];
#endif
			atomic {
				sinc = inc[SENDER(d)];
				if
				:: got[d] > del[d] -> del[d] = got[d]; flush(d)   /* PullAcknowledged */
				:: else -> skip
				fi;
				if
				:: !queue[d] -> skip                              /* push mode: empty at once */
				:: queue[d] && del[d] == head[d] -> queue[d] = 0; flush(d)  /* drained: PushResumed */
				:: queue[d] && del[d] < head[d] ->
					from = del[d]; to = head[d]; pulled[d] = 1;  /* PullServed */
#ifdef BREAK_ACK
					del[d] = head[d];
#endif
					flush(d)
				fi
			}
			/* the reply */
			if
			:: atomic { faults < MAXF -> faults++; ok = 0 }
			:: atomic { sinc != inc[SENDER(d)] -> ok = 0 }   /* the sender crashed while answering */
			:: skip
			fi
		:: else -> skip
		fi;
		atomic {
			if
			:: rinc != inc[RECEIVER(d)] -> break          /* the receiver crashed: this pull is gone */
			:: else -> skip
			fi;
			if
			:: ok && from < to ->
				do
				:: from < to -> accept(d, from); from++
				:: else -> break
				od
			:: ok && from == to -> gate[d] = 0; break     /* an empty reply: done */
			:: !ok -> gate[d] = 0; break                 /* failed: pulled again later */
			fi
		}
	   od
	od
}

/* One crash, of either server, at any step: what was in memory is lost. */
active proctype Crash() {
	byte c; byte d;
	atomic {
		!crashed -> crashed = 1;
		if
		:: c = 0
		:: c = 1
		:: c = 2                  /* no crash in this run */
		fi;
		if
		:: c == 2 -> goto done
		:: else -> inc[c]++
		fi;
		d = 0;
		do
		:: d < LINKS ->
			if
			:: SENDER(d) == c ->
				del[d] = dDel[d]; queue[d] = dQueue[d]; pulled[d] = dPulled[d];
				dirty[d] = 0; fails[d] = 0
			:: else -> gate[d] = 0    /* its pull from the sender ends */
			fi;
			d++
		:: else -> break
		od;
done:		skip
	}
}

/* When nothing can move any more, every event is applied and counted
 * delivered: no loss. */
active proctype Final() {
	byte d;
	timeout ->
	d = 0;
	do
	:: d < LINKS ->
		assert(head[d] == N);
		assert(got[d] == N);      /* no loss */
		assert(del[d] == N);      /* the sender knows it */
		d++
	:: else -> break
	od
}

init {
	byte d;
	atomic {
		d = 0;
		do
		:: d < LINKS ->
			run Enqueue(d); run Sender(d); run Duplicate(d); run Flush(d); run Puller(d);
			d++
		:: else -> break
		od
	}
}
