// What the pages share when a person changes something on the node: a failed call in
// words, a change in flight with what came of it, a question asked in the page before a
// change that cannot be undone, and a secret the node shows only once.
import type { ComponentChildren } from "preact";
import { useEffect, useRef, useState } from "preact/hooks";
import { ApiError, SessionEnded } from "./api";

/** Why a change did not go through, in words. A session that ended is answered by the
 * login over the page, but the change was not made: that is said too, to be tried again
 * once logged in. */
export function failure(e: unknown): string {
  if (e instanceof SessionEnded) return "not done, the session had ended: try again";
  return e instanceof ApiError ? e.message : String(e);
}

/** What a change did, then why one failed. What it did goes in a live region that is there
 * before the text (a status added with its text already in is not read out by every
 * screen reader); it takes no room while empty. Why one failed is an alert. */
export function Outcome({ done, error }: { done: string | null; error: string | null }) {
  return (
    <>
      <p class="result" role="status">
        {done}
      </p>
      {error && (
        <p class="error" role="alert">
          {error}
        </p>
      )}
    </>
  );
}

/** Whether the focus is nowhere (on the page's body): the element that had it went, or was
 * disabled (which takes the focus away from it). */
function focusLost(): boolean {
  const active = document.activeElement;
  return !active || active === document.body;
}

/** Keeps the focus where it is across a change whose button is disabled while it goes: the
 * function returned gives it back, once the page has drawn the button enabled again, if it
 * still stands and the focus has gone nowhere else meanwhile. */
export function holdFocus(): () => void {
  const before = document.activeElement;
  return () =>
    setTimeout(() => {
      if (before instanceof HTMLElement && before.isConnected && focusLost()) before.focus();
    });
}

/** A change sent to the node: busy while it goes, then what it did or why it was refused
 * (`outcome`, to place where the change was asked for). `onChanged` follows each change
 * that went through, to load again what it changed. */
export function useChange(onChanged: () => void = () => {}) {
  const [busy, setBusy] = useState(false);
  const [done, setDone] = useState<string | null>(null);
  const [error, setError] = useState<string | null>(null);
  /** Runs `f`. `what` says what it did: as is, from its answer, or nothing (null) where the
   * page shows it otherwise; `failed` goes before why it was refused. True when it went
   * through. */
  const run = async <T,>(
    what: string | null | ((answer: T) => string),
    f: () => Promise<T>,
    failed?: string,
  ): Promise<boolean> => {
    const restoreFocus = holdFocus();
    setBusy(true);
    setDone(null);
    setError(null);
    try {
      const answer = await f();
      setDone(typeof what === "function" ? what(answer) : what);
      onChanged();
      return true;
    } catch (e) {
      setError(failed ? `${failed}: ${failure(e)}` : failure(e));
      return false;
    } finally {
      setBusy(false);
      restoreFocus();
    }
  };
  const clear = () => {
    setDone(null);
    setError(null);
  };
  /** Says why a change is not sent (what the page checked first), in place of an outcome. */
  const refuse = (why: string) => {
    setDone(null);
    setError(why);
  };
  return { busy, run, clear, refuse, outcome: <Outcome done={done} error={error} /> };
}

/** A button that asks first, in the page (not window.confirm): pressed, it gives way to
 * `question` with a yes and a no; the yes is focused, and after either the button is again
 * (once the change is done, if the button still stands and nothing else took the focus).
 * `children` is the button's text, which should name what it is about. */
export function Confirm({
  children,
  question,
  yes,
  no = "Keep",
  onYes,
  disabled = false,
  buttonClass,
}: {
  children: ComponentChildren;
  question: string;
  yes: string;
  no?: string;
  onYes: () => void;
  disabled?: boolean;
  buttonClass?: string;
}) {
  const [asking, setAsking] = useState(false);
  const ask = useRef<HTMLButtonElement>(null);
  const yesButton = useRef<HTMLButtonElement>(null);
  /** Answered: the focus goes back to the button as soon as it can take it. */
  const answered = useRef(false);
  useEffect(() => {
    if (asking) {
      yesButton.current?.focus();
    } else if (answered.current && !disabled) {
      answered.current = false;
      if (focusLost()) ask.current?.focus();
    }
  }, [asking, disabled]);
  const answer = (go: boolean) => {
    answered.current = true;
    setAsking(false);
    if (go) onYes();
  };
  if (!asking) {
    return (
      <button type="button" class={buttonClass} disabled={disabled} ref={ask} onClick={() => setAsking(true)}>
        {children}
      </button>
    );
  }
  return (
    <span class="confirm" role="group" aria-label={question}>
      <span>{question}</span>
      <button type="button" class="danger" ref={yesButton} onClick={() => answer(true)}>
        {yes}
      </button>
      <button type="button" class="quiet" onClick={() => answer(false)}>
        {no}
      </button>
    </span>
  );
}

/** A secret the node shows this once (it keeps only a digest): focused when it appears,
 * with a copy button where the browser has a clipboard; dismissed, the focus goes back to
 * where it was (the button that made it). `onDone` must drop it from the caller's state, so
 * it is neither on the page nor in memory any more. */
export function ShownOnce({
  title,
  advice,
  value,
  copy,
  onDone,
}: {
  /** What it is, e.g. "The key x, shown only now:". */
  title: string;
  /** What to do with it, e.g. that it is not shown again. */
  advice: string;
  value: string;
  /** The copy button's text, e.g. "Copy the key". */
  copy: string;
  onDone: () => void;
}) {
  const [copied, setCopied] = useState<string | null>(null);
  const box = useRef<HTMLDivElement>(null);
  const before = useRef<Element | null>(null);
  useEffect(() => {
    // A task later: the change that made it gives the focus back to its button first
    // (holdFocus), and that is where the focus goes again when this is dismissed.
    const t = setTimeout(() => {
      before.current = document.activeElement;
      box.current?.focus();
    });
    return () => clearTimeout(t);
  }, []);
  const done = () => {
    const back = before.current;
    onDone();
    if (back instanceof HTMLElement && back !== document.body && back.isConnected) back.focus();
  };
  const clipboard = typeof navigator !== "undefined" ? navigator.clipboard : undefined;
  return (
    <div class="once" role="group" aria-label={title} tabIndex={-1} ref={box} data-secret-shown>
      <p>
        <strong>{title}</strong> {advice}
      </p>
      <p>
        <code data-secret>{value}</code>
      </p>
      <div class="actions">
        {clipboard && (
          <button
            type="button"
            onClick={() =>
              clipboard.writeText(value).then(
                () => setCopied("Copied."),
                () => setCopied("The browser did not allow copying: select it and copy it."),
              )
            }
          >
            {copy}
          </button>
        )}
        <button type="button" class="quiet" onClick={done}>
          I have kept it
        </button>
        <span role="status">{copied}</span>
      </div>
    </div>
  );
}
