// The dashboard's one script: a page whose <main> names an event stream (data-live) is drawn
// again, in place, when the stream says that what it shows changed. Without it (or without
// JavaScript) every page still reads; it only does not update itself. No build step; nothing
// but this file, served by the dashboard itself.
//
// Only a page in view follows its stream: a browser opens at most six connections to one
// host over HTTP/1.1, and a stream holds one for as long as it is open, so hidden tabs let
// go of theirs and catch up when shown again.
"use strict";
(function () {
  const status = document.getElementById("live");
  const QUIET_MS = 1000;        // at least this long between two redraws,
  const QUIET_FACTOR = 5;       // and at least five times as long as the last one took
  const FETCH_MS = 30000;       // a redraw that takes longer is given up
  const FIRST_RETRY_MS = 2000;  // after a lost stream or a failed redraw: then twice as long
  const LAST_RETRY_MS = 60000;  // each time, up to a minute, until a change comes through
  let source = null;
  let drawing = false;
  let again = false;
  let deferred = null;   // a redraw put off while the person is filling in a form
  let waiting = null;    // the next try after a pause
  let behind = false;    // hidden while something may have changed: catch up when shown
  let stopped = false;   // a refusal, or the dashboard restarted: no more tries
  let retry = FIRST_RETRY_MS;
  let quiet = QUIET_MS;
  let following = "";    // what the open stream follows (kinds, namespace, name; not versions)
  let openedAt = 0;      // when it opened

  function say(text) {
    if (status) {
      status.textContent = text;
      status.hidden = text === "";
    }
  }

  function close() {
    if (source !== null) {
      source.close();
      source = null;
    }
  }

  // What a stream address follows, without the versions (they change with every redraw).
  function shape(address) {
    const asked = new URLSearchParams(address.split("?")[1] || "");
    return Array.from(asked.keys()).sort().join(",") + "|" + (asked.get("namespace") || "") +
      "|" + (asked.get("name") || "");
  }

  function pause(text) {
    if (source !== null && Date.now() - openedAt > LAST_RETRY_MS) {
      retry = FIRST_RETRY_MS;  // it had followed well for a while: this is a new failure
    }
    close();
    say(text);
    if (waiting === null) {
      waiting = setTimeout(function () {
        waiting = null;
        draw();
      }, retry);
      retry = Math.min(retry * 2, LAST_RETRY_MS);
    }
  }

  function listen() {
    const main = document.querySelector("main[data-live]");
    if (main === null || typeof EventSource === "undefined") {
      say("");
      return;
    }
    if (stopped || source !== null) {
      return;
    }
    if (document.hidden) {
      behind = true;
      return;
    }
    source = new EventSource(main.dataset.live);
    following = shape(main.dataset.live);
    openedAt = Date.now();
    source.addEventListener("open", function () {
      say("Live: this page updates itself.");
    });
    source.addEventListener("changed", function () {
      retry = FIRST_RETRY_MS;  // the watch works
      draw();
    });
    source.addEventListener("ended", function (message) {
      let ended = {reason: "", then: "retry"};
      try {
        ended = JSON.parse(message.data);
      } catch (problem) {
        // told as a retry
      }
      if (ended.then === "stop") {
        close();
        stopped = true;
        say("This page does not update itself: " + ended.reason);
      } else if (ended.then === "redraw") {
        pause("Live updates: drawing the page again.");
      } else {
        pause("Live updates paused (" + ended.reason + "): trying again.");
      }
    });
    source.addEventListener("error", function () {
      pause("Live updates paused: trying again.");
    });
  }

  function inForm() {
    const focused = document.activeElement;
    return focused !== null && typeof focused.closest === "function" &&
      focused.closest("main form") !== null;
  }

  async function draw() {
    if (stopped) {
      return;
    }
    if (document.hidden) {
      behind = true;
      return;
    }
    if (drawing) {
      again = true;
      return;
    }
    if (inForm()) {  // what the person is choosing does not move under them
      if (deferred === null) {
        deferred = setTimeout(function () {
          deferred = null;
          draw();
        }, QUIET_MS);
      }
      return;
    }
    drawing = true;
    const began = Date.now();
    const giveUp = new AbortController();
    const timer = setTimeout(function () { giveUp.abort(); }, FETCH_MS);
    try {
      const answer = await fetch(window.location.href,
                                 {cache: "no-store", credentials: "same-origin",
                                  signal: giveUp.signal});
      if (answer.status === 401 && answer.headers.get("X-StartupMonkey-Login") === "required") {
        close();
        stopped = true;
        say("The dashboard was restarted or stopped: open the login address it printed.");
        return;
      }
      if (answer.status >= 500 || answer.status === 409 || answer.status === 429) {
        // The cluster did not answer this time: keep the page as it is, and try again.
        pause("Live updates paused (the page could not be drawn again: " + answer.status +
              "): trying again.");
        return;
      }
      const page = new DOMParser().parseFromString(await answer.text(), "text/html");
      if (inForm()) {  // focus went into a form meanwhile: draw it later
        again = true;
        return;
      }
      const fresh = page.querySelector("main");
      const shown = document.querySelector("main");
      if (fresh !== null && shown !== null) {
        shown.replaceWith(document.adoptNode(fresh));
        if (page.title) {
          document.title = page.title;
        }
      }
      const now = document.querySelector("main[data-live]");
      if (now === null) {
        close();  // the page now shows nothing to follow (gone, or no longer yours to see)
        say("");
      } else {
        if (source !== null && shape(now.dataset.live) !== following) {
          close();  // it now shows more (or less) than the stream follows
        }
        listen();
      }
      // Paced by what a redraw costs (a slow list is not fetched again and again).
      quiet = Math.min(Math.max(QUIET_MS, QUIET_FACTOR * (Date.now() - began)),
                       LAST_RETRY_MS);
    } catch (problem) {
      pause("Live updates paused: trying again.");
    } finally {
      clearTimeout(timer);
      await new Promise(function (done) { setTimeout(done, quiet); });
      drawing = false;
      if (again) {
        again = false;
        draw();
      }
    }
  }

  document.addEventListener("visibilitychange", function () {
    if (document.hidden) {
      if (source !== null) {
        close();
        behind = true;
      }
    } else if (behind) {
      behind = false;
      draw();  // catch up, then follow again
    }
  });

  listen();
}());
