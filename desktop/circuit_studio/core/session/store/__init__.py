"""Saving and opening `.cs-session` files (SQLite as an application file format); the format is in
`session_schema`.

    save_session(session, path, backup=False)     # in place, only what changed; a kill leaves old or new
    save_session_as(session, path, backup=False)  # the whole file (Save As); later saves there are in place
    load_session(path) -> Session                 # never needs the model; old schemas are migrated in memory
    read_session_info(path) -> SessionInfo        # meta only (versions, times), e.g. for a recent-files list
    remove_stale_files(folder)                    # at start: what killed processes left (autosave folder)

Saving in place. The store remembers what each file it saved or opened holds (`registry`). When
`save_session` goes to such a file and the file is still as it was left, the save is one SQLite
transaction in rollback-journal mode (`synchronous = FULL`) that writes only the rows that differ:
the analysis state, labels, interventions, window state, resources, and the arrays of graphs the file
does not hold yet (a graph's arrays are written once, when it is first saved; those of removed graphs
are deleted). A save that changes nothing writes nothing. A kill or power cut at any moment leaves
SQLite's journal beside the file; the next open or save applies it, so the file reads as the last
saved state or the new one, never a mix.

Saving whole (a new path, a file changed by someone else, `save_session_as`, an older schema, a file
more than half free space): the database is built in a temporary file beside the target (journal
off: the file means nothing until renamed), from a copy of a file already holding the session's
graphs when there is one (Save As does not encode them again), then fsynced and renamed onto the
target (`atomic_write.replace_all_or_none`); temporaries of dead processes are removed by the next
save to the same name, or by `remove_stale_files` for a folder.

`.bak`: with `backup`, "<name>.bak" is the file as it was before this process first wrote to it (a
whole write keeps the file it replaces; the first in-place save copies the file). Saving onto a file
of an older schema always keeps it as "<name>.bak": older Circuit Studios can still open that.

Checks: every save refuses a file another program is writing (`SessionLockedError`, after a short
wait) and checks that the disk has room for what it will write (estimated from the encoded rows).
Every failure raises `SessionError` saying what happened and what to do (read-only file or folder,
full disk, locked, ...); the previous file is left as it was and no temporary file stays behind.

Opening checks, in order: the file is an SQLite database of ours (header and application id), not
truncated, has a `meta` table with our format name, a schema version this code can read (a newer one
-> "written by a newer Circuit Studio"), passes `PRAGMA quick_check`, and its rows match the saved
digest and every array chunk its crc32. A file locked by a writer raises `SessionLockedError` (not
"damaged"). The file is read in one read transaction, read-only; an older schema is copied into
memory and migrated there (`session_schema.MIGRATIONS`).
"""

from .codec import decode_array, encode_array
from .files import SessionError, SessionLockedError, remove_stale_files
from .read import SessionInfo, load_session, read_session_info
from .write import save_session, save_session_as

__all__ = ["SessionError", "SessionLockedError", "SessionInfo", "save_session", "save_session_as", "load_session",
           "read_session_info", "remove_stale_files", "encode_array", "decode_array"]
