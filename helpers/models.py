"""The small blog schema that several notebooks share: users write posts, posts have tags.

Notebook 02 builds models like these step by step; later notebooks import these so their
first cells can go straight to the lesson. Relationships use the default ``lazy="select"``
on purpose: notebook 06 shows why that fails under asyncio and what to do instead.

    User 1 ── * Post * ── * Tag        (post_tags is the association table)
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Column, DateTime, ForeignKey, String, Table, Text, func
from sqlalchemy.ext.asyncio import AsyncAttrs
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

__all__ = ["Base", "Post", "Tag", "User", "post_tags"]


class Base(AsyncAttrs, DeclarativeBase):
    """Declarative base with ``AsyncAttrs`` (adds ``obj.awaitable_attrs``)."""


post_tags = Table(
    "post_tags",
    Base.metadata,
    Column("post_id", ForeignKey("posts.id", ondelete="CASCADE"), primary_key=True),
    Column("tag_id", ForeignKey("tags.id", ondelete="CASCADE"), primary_key=True),
)


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50), unique=True)
    email: Mapped[str] = mapped_column(String(120), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    posts: Mapped[list[Post]] = relationship(back_populates="author", order_by="Post.id")

    def __repr__(self) -> str:
        return f"User(id={self.__dict__.get('id')!r}, name={self.__dict__.get('name')!r})"


class Post(Base):
    __tablename__ = "posts"

    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(200))
    body: Mapped[str] = mapped_column(Text, default="")
    author_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))

    author: Mapped[User] = relationship(back_populates="posts")
    tags: Mapped[list[Tag]] = relationship(secondary=post_tags, back_populates="posts", order_by="Tag.id")

    def __repr__(self) -> str:
        return f"Post(id={self.__dict__.get('id')!r}, title={self.__dict__.get('title')!r})"


class Tag(Base):
    __tablename__ = "tags"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(30), unique=True)

    posts: Mapped[list[Post]] = relationship(secondary=post_tags, back_populates="tags", order_by="Post.id")

    def __repr__(self) -> str:
        return f"Tag(id={self.__dict__.get('id')!r}, name={self.__dict__.get('name')!r})"
